"""The one training loop for every loss: step, epoch, evaluation, checkpoints.

The step returns named terms (`loss`, `task`, `lwr`) that are accumulated on the device and
synchronised only at log intervals, so the GPU never waits on a per-step `.item()`.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwrcli.checkpoint import save_checkpoint, save_train_state, state_path, unwrap
from lwrcli.config import TrainConfig
from lwrcli.data.loading import BatchLoader, DataBundle
from lwrcli.distributed import DistInfo, all_gather_cat, all_reduce_sum
from lwrcli.errors import UserError
from lwrcli.losses import build_loss, reweight_for_epoch
from lwrcli.lwr import lwr_lambda, lwr_penalty
from lwrcli.metrics import summarize
from lwrcli.models import CLASSIFIER_KEY
from lwrcli.progress import TrainProgress
from lwrcli.schedule import lr_at


class TrainingDiverged(UserError):
    """The loss became NaN/inf: training stops and the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the last complete epoch's checkpoint is kept."""


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """One autocast context for the whole loop; bf16 needs no loss scaler."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module, loader: BatchLoader, device: torch.device, amp: str, dist: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) float32 and targets (N,) for a whole split, gathered over ranks."""
    model.eval()
    logits, targets = [], []
    with autocast_context(device, amp):
        for x, y in loader:
            logits.append(model(x).float())
            targets.append(y)
    out = torch.cat(logits), torch.cat(targets)
    return all_gather_cat(out[0], dist), all_gather_cat(out[1], dist)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        data: DataBundle,
        device: torch.device,
        run_dir: Path | None,
        dist: DistInfo | None = None,
        progress: TrainProgress | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.data = data
        self.dist = dist or DistInfo()
        self.run_dir = run_dir
        self.raw_model = unwrap(model)
        self.model = model
        self.classifier = self.raw_model.fc
        counts = torch.tensor(data.class_counts, dtype=torch.float64)
        self.class_counts = counts.to(device)
        self.loss_fn = build_loss(cfg.loss, counts).to(device)
        self.base_lr = cfg.effective_lr
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=self.base_lr,
            momentum=cfg.optim.momentum,
            nesterov=cfg.optim.nesterov,
            weight_decay=cfg.optim.weight_decay,
        )
        self.state = TrainState()
        self.progress = progress or TrainProgress(cfg.epochs, enabled=self.dist.is_main)
        self.select_split = self._selection_split()
        self._stop_signal: int | None = None

    # --- selection -------------------------------------------------------------------------
    def _selection_split(self) -> str | None:
        """Select 'best' on validation only; on test only when the config asks explicitly."""
        m = self.data.manifest
        if self.cfg.data.select_on == "val" and m.val_split and m.val_split in self.data.evals:
            return m.val_split
        if self.cfg.data.select_on == "test" and m.test_split in self.data.evals:
            return m.test_split
        return None

    # --- one step --------------------------------------------------------------------------
    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, t: float, class_weight: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        lr = lr_at(cfg.schedule, self.base_lr, t, cfg.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast_context(self.device, cfg.amp):
            logits = self.model(x)
        task = self.loss_fn(logits.float(), y, class_weight)
        terms = {"task": task.detach()}
        loss = task
        if cfg.lwr.enabled:
            lam = lwr_lambda(cfg.lwr, t, cfg.epochs)
            reg = lwr_penalty(
                self.classifier.weight,
                theta=cfg.lwr.theta,
                power=cfg.lwr.power,
                proj=cfg.lwr.proj,
                block_size=cfg.lwr.block_size,
            )
            loss = task + lam * reg
            terms["lwr"] = reg.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
        self.optimizer.step()
        terms["loss"] = loss.detach()
        terms["correct"] = (logits.detach().argmax(1) == y).sum()
        return terms

    # --- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        loader = self.data.train
        assert loader is not None
        loader.set_epoch(epoch)
        self.model.train()
        weight = reweight_for_epoch(self.cfg.loss, self.class_counts.cpu(), epoch)
        weight = weight.to(self.device, torch.float32) if weight is not None else None
        steps = len(loader)
        # Running sums on the device: loss, task, lwr (sample-weighted), correct, samples.
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        self.progress.start_epoch(epoch, steps)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            t = epoch + (step + 1) / steps
            terms = self.train_step(x, y, t, weight)
            b = y.shape[0]
            zero = torch.zeros((), device=self.device)
            sums += torch.stack(
                [
                    terms["loss"] * b,
                    terms["task"] * b,
                    terms.get("lwr", zero) * b,
                    terms["correct"].to(torch.float64),
                    torch.tensor(float(b), device=self.device, dtype=torch.float64),
                ]
            ).to(torch.float64)
            info = None
            if (step + 1) % self.cfg.log_every == 0:
                loss_now = float(terms["loss"])  # the one sync per log interval
                self._check_finite(loss_now, epoch)
                info = {"loss": loss_now, "lr": self.optimizer.param_groups[0]["lr"]}
            self.progress.step(epoch, step, steps, info)
            if self._stop_signal is not None:
                raise Interrupted()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        total = all_reduce_sum(sums, self.dist).tolist()
        n = max(total[4], 1.0)
        result = {
            "loss": total[0] / n,
            "task": total[1] / n,
            "lwr": total[2] / n if self.cfg.lwr.enabled else None,
            "lwr_lambda": lwr_lambda(self.cfg.lwr, epoch + 1, self.cfg.epochs),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_acc": 100.0 * total[3] / n,
            "images_per_s": total[4] / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }
        self._check_finite(result["loss"], epoch)
        return result

    def _check_finite(self, value: float, epoch: int) -> None:
        if not math.isfinite(value):
            where = (
                f" The last good checkpoint is kept in {self.run_dir}/checkpoints."
                if (self.run_dir and self.state.epoch > 0)
                else ""
            )
            raise TrainingDiverged(
                f"Training diverged: the loss became {value} in epoch {epoch + 1}.{where} "
                "Lower optim.lr, enable optim.clip_grad_norm, or lower lwr.lambda_max."
            )

    # --- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split, loader in self.data.evals.items():
            logits, targets = predict(self.model, loader, self.device, self.cfg.amp, self.dist)
            s = summarize(logits.cpu(), targets.cpu(), self.data.class_counts)
            for key in ("top1", "top5", "many", "medium", "few"):
                out[f"{split}_{key}"] = s[key]
        return out

    # --- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainState:
        cfg = self.cfg
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for epoch in range(self.state.epoch, cfg.epochs):
                record: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
                last = epoch + 1 == cfg.epochs
                if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                    record.update(self.evaluate())
                self.state.epoch = epoch + 1
                self._maybe_select(record)
                self.state.history.append(record)
                self._save(record)
                self.progress.end_epoch(epoch, _brief(record))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.state

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        self.progress.message("Stopping after this step; the last complete epoch is kept ...")

    def _maybe_select(self, record: dict[str, Any]) -> None:
        key = f"{self.select_split}_top1"
        if self.select_split is None or record.get(key) is None:
            return
        if self.state.best_metric is None or record[key] > self.state.best_metric:
            self.state.best_metric = record[key]
            self.state.best_epoch = self.state.epoch
            record["best"] = True

    # --- checkpoints -----------------------------------------------------------------------
    def _save(self, record: dict[str, Any]) -> None:
        if self.run_dir is None or not self.dist.is_main:
            return
        ckpt_dir = self.run_dir / "checkpoints"
        names = ["last"]
        if self.cfg.save_every and self.state.epoch % self.cfg.save_every == 0:
            names.append(f"epoch_{self.state.epoch}")
        if record.get("best"):
            names.append("best")
        extra = {"selected_on": self.select_split or "none"}
        for name in names:
            save_checkpoint(
                ckpt_dir / f"{name}.safetensors",
                self.raw_model,
                self.cfg,
                self.data.class_counts,
                self.data.manifest.class_names,
                self.state.epoch,
                record,
                CLASSIFIER_KEY,
                extra={**extra, "dataset_fingerprint": self.data.manifest.fingerprint},
            )
        tensors, meta = self.resume_state()
        save_train_state(state_path(ckpt_dir / "last.safetensors"), tensors, meta)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def resume_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything beyond the weights that an exact resume needs, as tensors + JSON."""
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        loader_state = getattr(self.data.train, "state", None)
        if callable(loader_state):
            tensors["rng.loader"] = loader_state()
        for idx, buf in self.optimizer.state_dict()["state"].items():
            for name, value in buf.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{name}"] = value
        meta = {
            "epoch": self.state.epoch,
            "best_metric": self.state.best_metric,
            "best_epoch": self.state.best_epoch,
        }
        return tensors, meta

    def load_resume_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.loader" in tensors and hasattr(self.data.train, "load_state"):
            self.data.train.load_state(tensors["rng.loader"])  # type: ignore[union-attr]
        sd = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value.to(self.device)
        sd["state"] = state
        self.optimizer.load_state_dict(sd)
        self.state.epoch = int(meta["epoch"])
        self.state.best_metric = meta.get("best_metric")
        self.state.best_epoch = meta.get("best_epoch")


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("loss", "lwr", "lr", "train_acc", "images_per_s")
    out = {k: record[k] for k in keep if record.get(k) is not None}
    out.update({k: v for k, v in record.items() if k.endswith("_top1") and v is not None})
    return out
