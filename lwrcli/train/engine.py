"""The one training loop for every loss: step, epoch, evaluation, checkpoints (the saves
themselves in `lwrcli.train.saves`; what a run trains in `lwrcli.train.components`).

The step returns named terms (`loss`, `task`, `lwr`) that are accumulated on the device and
synchronised only at log intervals, so the GPU never waits on a per-step `.item()`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwrcli.checkpoint.resume import RunState
from lwrcli.config import TrainConfig
from lwrcli.errors import UserError
from lwrcli.hooks import hook_point
from lwrcli.methods.losses import reweight_for_epoch
from lwrcli.models import get_classifier, get_classifiers
from lwrcli.runtime.device import autocast_context, eval_amp
from lwrcli.runtime.distributed import DistInfo, all_reduce_sum
from lwrcli.runtime.timing import phase_timer
from lwrcli.train.components import Components
from lwrcli.train.geometry import heads_geometry, heads_gradient_share
from lwrcli.train.live_log import LiveLog
from lwrcli.train.lwr import resolve_margin
from lwrcli.train.optim import set_lr
from lwrcli.train.progress import TrainProgress
from lwrcli.train.saves import CheckpointWriter
from lwrcli.train.schedule import lr_at
from lwrcli.train.scoring import score_splits


class TrainingDiverged(UserError):
    """The loss became NaN/inf: training stops and the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the run was saved where it stood. `where` (the message) says
    where, `run_dir` which run (None: no run, e.g. a sweep between runs). A sweep sets
    `sweep` to what it kept, and `late` when nothing was left to do when the stop came; the
    CLI then names the command that continues (lwrcli.cli.main)."""

    def __init__(self, where: str = "", run_dir: Path | None = None) -> None:
        super().__init__(where)
        self.where = where
        self.run_dir = run_dir
        self.sweep: str | None = None
        self.late = False


class Trainer(CheckpointWriter):
    """Runs the loop over built components: steps, epochs, evaluation, checkpoints."""

    def __init__(
        self,
        cfg: TrainConfig,
        parts: Components,
        device: torch.device,
        run_dir: Path | None,
        dist: DistInfo | None = None,
        progress: TrainProgress | None = None,
        live: LiveLog | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.parts = parts
        self.data = parts.data
        self.model = parts.model
        self.optimizer = parts.optimizer
        self.loss_fn = parts.loss
        self.regularizer = parts.regularizer
        # θ, or each pair's cosine at initialisation (`theta: init`): what geometry reports.
        self.margin = resolve_margin(cfg.lwr.theta, parts.theta_reference)
        self.classifier = get_classifier(parts.raw_model)
        # Every classifier LWR repels: the one head, or each head of a multi-head model.
        self.classifiers = get_classifiers(parts.raw_model)
        self.class_counts = torch.tensor(self.data.class_counts, dtype=torch.float64)
        self.dist = dist or DistInfo()
        self.run_dir = run_dir
        self.state = RunState()
        self.history: list[dict[str, Any]] = []
        self._initial_record: dict[str, Any] | None = None  # epoch 0, until the first save
        self.progress = progress or TrainProgress(cfg.epochs, enabled=self.dist.is_main)
        # Trackers (TensorBoard, MLflow, W&B) that see every metrics.jsonl record; none: no-op.
        self.live = live or LiveLog()
        self.timer = phase_timer(device, self.progress.message)  # LWR_PHASE_TIMES: off = no-op
        self.select_split = self._selection_split()
        self._stop_signal: int | None = None
        self.lr = parts.base_lr  # the scheduled lr (groups apply their own multipliers)
        self.resumed_sums: torch.Tensor | None = None  # a mid-epoch resume's sums so far
        self._resumed_samples = 0.0
        self._epoch_images = 0.0
        self._saving = False
        self._abort_after_save = False
        self._last_save = time.monotonic()
        # A stop asked for after the last step: the run finished whole; callers (a sweep, the
        # CLI) still stop, and say so.
        self.stopped_late = False
        # Set by train_epoch on log steps: train_step then also measures LWR's gradient share.
        self._measure_share = False

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
        """One optimizer step at progress t (epochs) on this process's part of the global
        batch, in cfg.accum_steps micro-batches; returns named terms, still on the device.

        Each micro-batch's task loss is weighted by its share of the global batch times the
        world size (DDP averages gradients over processes), so the gradient is that of the
        global batch's mean loss whatever the number of processes or micro-batches."""
        cfg = self.cfg
        lr = lr_at(cfg.schedule, self.parts.base_lr, t, cfg.epochs)
        set_lr(self.optimizer, lr)
        self.lr = lr
        world = self.dist.world_size
        global_batch = getattr(self.data.train, "last_global_batch", None) or y.shape[0] * world
        lwr = self.regularizer(self._lwr_weights(), t) if self.regularizer else None
        self.optimizer.zero_grad(set_to_none=True)
        task_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        chunks = list(zip(x.tensor_split(cfg.accum_steps), y.tensor_split(cfg.accum_steps)))
        for i, (xc, yc) in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or not world > 1 else self.model.no_sync()
            with sync:
                with autocast_context(self.device, cfg.amp):
                    logits = self.model(xc)
                task = self.loss_fn(logits.float(), yc, class_weight)
                scale = yc.shape[0] * world / global_batch
                loss = task if scale == 1.0 else task * scale
                share = None
                if last and lwr is not None:
                    loss = loss + lwr[0]
                    if self._measure_share:
                        share = self._lwr_grad(lwr[0])
                loss.backward()
            task_sum += task.detach().double() * yc.shape[0]
            hard = yc.argmax(1) if yc.dim() == 2 else yc  # soft targets: their largest class
            correct += (logits.detach().argmax(1) == hard).sum()
        extra: dict[str, torch.Tensor] = {}
        if share is not None:
            extra = self._lwr_share(share)
        elif self._measure_share and self.regularizer is not None:
            extra = {"lwr_share": torch.zeros((), device=self.device)}  # λ(t) = 0 or θ = 1
        if cfg.optim.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
        self.optimizer.step()
        for hook in self.parts.after_step:
            hook()
        task_mean = (task_sum / y.shape[0]).float()
        terms = {"task": task_mean, "loss": task_mean, "correct": correct, **extra}
        if lwr is not None:
            terms["lwr"] = lwr[1]
            terms["loss"] = task_mean + lwr[0].detach()
        return terms

    def _lwr_weights(self) -> torch.Tensor | list[torch.Tensor]:
        """The weight LWR repels: the head's (C, d), or each head's of a multi-head model, or
        the rows a method hands over instead (`Components.lwr_rows`: prototypes computed from
        trained parameters)."""
        if self.parts.lwr_rows is not None:
            return self.parts.lwr_rows()
        if len(self.classifiers) == 1:
            return self.classifier.weight
        return [c.weight for c in self.classifiers]

    def _lwr_grad(self, lam_r: torch.Tensor) -> list[torch.Tensor]:
        """λ ∇_W R of each head from the regularizer's own (blockwise) backward; no extra
        model pass."""
        weights = [c.weight for c in self.classifiers]
        # Rows a method hands over (lwr_rows) need not depend on every head: no gradient is 0.
        grads = torch.autograd.grad(lam_r, weights, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]

    def _lwr_share(self, lwr_grads: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        lw = self.cfg.lwr
        weights = [c.weight for c in self.classifiers]
        return heads_gradient_share(weights, lwr_grads, self.margin, lw.proj, lw.block_size)

    # --- one epoch -------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch `epoch` (0-based) from the loader's position: 0, or where a mid-epoch
        checkpoint left it (then `self.resumed_sums` holds the epoch's sums so far)."""
        loader = self.data.train
        assert loader is not None
        loader.set_epoch(epoch)
        for hook in self.parts.before_epoch:
            hook(epoch)
        self.model.train()
        weight = reweight_for_epoch(self.cfg.loss, self.class_counts, epoch)
        weight = weight.to(self.device, torch.float32) if weight is not None else None
        steps = len(loader)
        start = loader.position
        # Running sums on the device: loss, task, lwr (sample-weighted), correct, samples.
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        if self.resumed_sums is not None:
            sums, self.resumed_sums = self.resumed_sums.to(self.device), None
            self._resumed_samples = float(sums[4])
        self.progress.start_epoch(epoch, steps)
        t0 = time.perf_counter()
        share: dict[str, Any] = {}
        batches = self.timer.wrap(iter(loader))
        for step in range(start, steps):
            x, y = next(batches)
            for transform in self.parts.batch_transforms:  # seeded by the batch's position
                x, y = transform(x, y, epoch, step)
            t = epoch + (step + 1) / steps
            log_step = (step + 1) % self.cfg.log_every == 0
            self._measure_share = log_step or step + 1 == steps
            self.loss_fn.set_position(epoch, step)  # a switch epoch, seeded draws
            with self.timer("steps"):
                terms = self.train_step(x, y, t, weight)
            self._measure_share = False
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
            if "lwr_share" in terms:  # log steps and the epoch's last step only
                share = {k: float(terms[k]) for k in ("lwr_share", "lwr_pairs_above") if k in terms}
            info = None
            if log_step:
                loss_now = float(terms["loss"])  # the one sync per log interval
                self._check_finite(loss_now, epoch)
                info = {"loss": loss_now, "lr": self.lr, **share}
            with self.timer("logging"):
                self.progress.step(epoch, step, steps, info)
            hook_point("step", until=lambda: self._stop_signal is not None)
            save, stop = self._pause_point(epoch * steps + step + 1, step + 1)
            if save and (stop or step + 1 < steps):  # the epoch's end saves anyway
                self._check_finite(float(terms["loss"]), epoch)
                self._save_mid_epoch(epoch, step + 1, sums)
            if stop:
                raise Interrupted(f"epoch {epoch + 1}, step {step + 1} of {steps}", self.run_dir)
        for _ in batches:  # let the loader close its epoch (it has no batch left)
            pass
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        total = all_reduce_sum(sums, self.dist).tolist()
        n = max(total[4], 1.0)
        self._epoch_images = total[4] - self._resumed_samples  # trained in this call
        result = {
            "loss": total[0] / n,
            "task": total[1] / n,
            "lwr": total[2] / n if self.regularizer else None,
            "lwr_lambda": self.regularizer.lam(epoch + 1) if self.regularizer else 0.0,
            "lr": self.lr,
            "train_acc": 100.0 * total[3] / n,
            "images_per_s": self._epoch_images / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            # At the epoch's last step; None without LWR.
            "lwr_share": share.get("lwr_share"),
            "lwr_pairs_above": share.get("lwr_pairs_above"),
        }
        self._resumed_samples = 0.0
        self._check_finite(result["loss"], epoch)
        return result

    def _pause_point(self, global_step: int, step: int) -> tuple[bool, bool]:
        """(save a mid-epoch checkpoint now, stop now). Every process must agree, since the
        save gathers the epoch's sums: under torchrun they decide together at log intervals
        and step-based checkpoints; a single process decides after every step."""
        cfg = self.cfg
        at_steps = (
            bool(cfg.checkpoint_every_steps) and global_step % cfg.checkpoint_every_steps == 0
        )
        if self.dist.enabled and not (at_steps or step % cfg.log_every == 0):
            return False, False
        stop = self._stop_signal is not None
        minutes = cfg.checkpoint_every_minutes
        timed = bool(minutes) and time.monotonic() - self._last_save >= 60.0 * minutes
        if self.dist.enabled:
            flags = torch.tensor([float(stop), float(timed)], device=self.device)
            stop, timed = (bool(v > 0) for v in all_reduce_sum(flags, self.dist).tolist())
        return at_steps or timed or stop, stop

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
        return score_splits(
            self.parts.eval_model or self.model,
            self.data.evals,
            self.data.class_counts,
            self.device,
            eval_amp(self.cfg.amp, self.device),  # what `lwr eval` uses: fp32 on CPU
            self.dist,
        )

    # --- the loop --------------------------------------------------------------------------
    def fit(self) -> RunState:
        """Train the remaining epochs. A stop asked for at any instant is acted on: inside an
        epoch at the next step (`_pause_point`), during an evaluation or save at the epoch's
        end (after the save); after the last step it is recorded in `stopped_late` and handed
        on through `progress.stop_requested`, so a sweep stops before its next run."""
        cfg = self.cfg
        signals = (signal.SIGINT, signal.SIGTERM, *_warning_signals())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        self._last_save = time.monotonic()
        if getattr(self.progress, "stop_requested", False):
            self._stop_signal = signal.SIGINT  # Ctrl-C came while the run was being set up
        try:
            since = time.perf_counter()  # images_per_s counts the whole epoch (docs/training.md)
            if self.state.epoch == 0 and self.state.step == 0:
                self._record_initial_geometry()
            for epoch in range(self.state.epoch, cfg.epochs):
                self.timer.start_epoch()
                record: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
                record.update(self._geometry())
                # From the end of the last evaluation: its save and logs, data, steps, geometry.
                took = time.perf_counter() - since
                record.update(images_per_s=self._epoch_images / took, epoch_time_s=took)
                last = epoch + 1 == cfg.epochs
                if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                    if last:  # tests stop the process here: the window of issue 17
                        hook_point("last-eval", until=lambda: self._stop_signal is not None)
                    with self.timer("eval"):
                        record.update(self.evaluate())
                since = time.perf_counter()
                self.state.epoch, self.state.step = epoch + 1, 0
                self._maybe_select(record)
                self.history.append(record)
                self._save(record)
                with self.timer("logging"):
                    self.progress.end_epoch(epoch, _brief(record))
                self.timer.end_epoch(epoch + 1, self._epoch_images)
                if not last and self._stop_agreed():
                    raise Interrupted(f"epoch {epoch + 1}, after its last step", self.run_dir)
        finally:
            self.finish_writes()  # the last save on disk (or its error) before anything else
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._stop_signal is not None:
            self.stopped_late = True
            self.progress.stop_requested = True
        return self.state

    def _stop_agreed(self) -> bool:
        """At an epoch's end: did any process receive a stop? (All processes call this.)"""
        stop = self._stop_signal is not None
        if self.dist.enabled:
            flag = torch.tensor([float(stop)], device=self.device)
            stop = bool(all_reduce_sum(flag, self.dist).item() > 0)
        return stop

    @property
    def stop_signal(self) -> int | None:
        """The signal that asked this run to stop (SIGINT, SIGTERM, SIGUSR1), if any."""
        return self._stop_signal

    def _geometry(self) -> dict[str, Any]:
        """Class-vector geometry at the run's θ (also without LWR): see lwrcli.train.geometry."""
        lw = self.cfg.lwr
        weights = [c.weight for c in get_classifiers(self.parts.raw_model)]
        with self.timer("geometry"):
            return heads_geometry(
                weights, self.data.class_counts, self.margin, lw.proj, lw.block_size, lw.power
            )

    def _record_initial_geometry(self) -> None:
        """An `epoch: 0` record of where the class vectors start (a text-initialised head
        starts with similar classes close together; a random one near-orthogonal). It reaches
        metrics.jsonl with the first save, so the file exists only beside a checkpoint."""
        record = {"epoch": 0, **self._geometry()}
        self.history.append(record)
        self._initial_record = record

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            if signum != signal.SIGINT:  # a scheduler repeating itself: already stopping
                return
            if self._saving:  # second Ctrl-C: stop now, but never mid-save
                self._abort_after_save = True
                return
            raise KeyboardInterrupt
        self._stop_signal = signum
        why = "the scheduler's warning signal" if signum != signal.SIGINT else "Ctrl-C"
        self.progress.message(f"Stopping ({why}): saving where the run stands ...")

    def _maybe_select(self, record: dict[str, Any]) -> None:
        key = f"{self.select_split}_top1"
        if self.select_split is None or record.get(key) is None:
            return
        if self.state.best_metric is None or record[key] > self.state.best_metric:
            self.state.best_metric = record[key]
            self.state.best_epoch = self.state.epoch
            record["best"] = True


def _warning_signals() -> tuple[int, ...]:
    """SLURM's warning before the time limit (`--signal=B:USR1@120`), where the OS has it."""
    return (signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ()


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("loss", "lwr", "lr", "train_acc", "images_per_s", "lwr_share")
    out = {k: record[k] for k in keep if record.get(k) is not None}
    out.update({k: v for k, v in record.items() if k.endswith("_top1") and v is not None})
    return out
