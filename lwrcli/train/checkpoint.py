"""Checkpoints as safetensors only (no pickle anywhere), written atomically.

`NAME.safetensors` holds the unwrapped model weights plus metadata (config, class counts and
names, epoch, metrics, which tensor is the classifier). `last.state.safetensors` holds what an
exact resume needs: optimizer buffers, every RNG, the loader's position inside an epoch.

The weights and the state of `last` are one unit: both carry the same commit id, and a save
renames them in an order that, together with the previous state kept as
`last.state.prev.safetensors`, leaves a matching pair on disk whenever the process dies
(`resume_point` finds it). See `commit_resume_point`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lwrcli import __version__
from lwrcli.config.schema import TrainConfig, validate_config
from lwrcli.errors import UserError
from lwrcli.runtime.runname import run_name
from lwrcli.train.frozen_base import stored_state

FORMAT = "lwr-checkpoint-1"
# Tensors of a checkpoint file that belong to the run, not to the model's state dict.
EXTRA_PREFIX = "lwr_state."
# `theta: init`: the head's unit rows at initialisation, each pair's margin (C, d).
THETA_REFERENCE = EXTRA_PREFIX + "theta_reference"
# `ema`: the moving average of each stored model tensor, and its counters (lwrcli.methods.ema).
EMA_PREFIX, EMA_STEPS = EXTRA_PREFIX + "ema.", EXTRA_PREFIX + "ema_steps"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP (`module.`) and torch.compile (`_orig_mod.`) wrappers before saving."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _write_temp(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """save_file into a temp file beside `path`, flushed to disk; removed again on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(contiguous, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a temp file in the same folder, then rename: readers never see half a file."""
    tmp = _write_temp(tensors, path, metadata)
    try:
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class Checkpoint:
    state: dict[str, torch.Tensor]
    config: TrainConfig
    class_counts: list[int]
    class_names: list[str]
    epoch: int  # epochs completed
    metrics: dict[str, Any]
    classifier_key: str
    meta: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    # Run tensors beside the model's (EXTRA_PREFIX keys), e.g. THETA_REFERENCE.
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Batches done of the epoch in progress: 0 for an end-of-epoch checkpoint."""
        return int(self.meta.get("step", 0))

    @property
    def classifier_weight(self) -> torch.Tensor:
        """(C, d) class weight vectors, bias excluded."""
        return self.state[self.classifier_key]

    @property
    def label(self) -> str:
        """A short name for plots and tables: the run's name within its sweep
        (`bs-lwr/theta=0.4/seed=0`, not just `seed=0`) or its folder's name; for a file
        outside a run folder, the file's name."""
        if self.path is None:
            return self.config.name
        parent = self.path.parent
        if parent.name == "checkpoints":
            return run_name(parent.parent)
        return self.path.stem


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    config: TrainConfig,
    class_counts: list[int],
    class_names: list[str],
    epoch: int,
    metrics: dict[str, Any],
    classifier_key: str,
    extra: dict[str, str] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    tensors, meta = checkpoint_payload(
        model,
        config,
        class_counts,
        class_names,
        epoch,
        metrics,
        classifier_key,
        extra,
        extra_tensors,
    )
    atomic_save(tensors, path, meta)


def checkpoint_payload(
    model: torch.nn.Module,
    config: TrainConfig,
    class_counts: list[int],
    class_names: list[str],
    epoch: int,
    metrics: dict[str, Any],
    classifier_key: str,
    extra: dict[str, str] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The unwrapped weights and the metadata of a checkpoint file.

    A frozen-base run (a model with a base identity `lwr_base` and the keys that train outside
    the head, `lwr_tuned`; see lwrcli.models.tuning) stores only those tensors and the whole
    head, plus the base weights' name and sha256: the rest is rebuilt from the base file.
    Every other model, including a tuned one on a random base (nothing to rebuild from), is
    stored whole. `extra_tensors` (keys under EXTRA_PREFIX) are the run's own, stored beside
    the model's."""
    state, stored = stored_state(unwrap(model), classifier_key)
    meta = {
        "format": FORMAT,
        "tool_version": __version__,
        "config": config.model_dump_json(),
        "class_counts": json.dumps(list(map(int, class_counts))),
        "class_names": json.dumps(list(class_names)),
        "epoch": str(int(epoch)),
        "metrics": json.dumps(metrics),
        "classifier_key": classifier_key,
        **stored,
        **(extra or {}),
    }
    if classifier_key not in state:
        raise ValueError(f"classifier key {classifier_key!r} not in the model's state")
    tensors = dict(state)
    for key, value in (extra_tensors or {}).items():
        if not key.startswith(EXTRA_PREFIX):
            raise ValueError(f"extra checkpoint tensor {key!r} must start with {EXTRA_PREFIX}")
        tensors[key] = value
    return tensors, meta


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.is_dir():
            hint = f" It is a folder; did you mean {path / 'checkpoints' / 'last.safetensors'}?"
        raise UserError(f"Checkpoint {path} does not exist.{hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"Checkpoint {path} cannot be read: it is truncated, corrupted or not a "
            f"safetensors file ({str(exc).splitlines()[0][:160]}). Use another checkpoint, "
            "such as the run's checkpoints/last.safetensors."
        ) from None
    return tensors, meta


def load_checkpoint(path: Path, weights: str = "ema") -> Checkpoint:
    """A checkpoint whose `state` is the moving average of the weights where it holds one
    (`weights="ema"`, what eval/predict/export/analysis use), else the raw weights."""
    tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is a safetensors file but not an lwr checkpoint (no '{FORMAT}' metadata)."
        )
    try:
        config = validate_config(json.loads(meta["config"]), source=f"checkpoint {path}")
        extras = {k: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
        ema = {k[len(EMA_PREFIX) :]: v for k, v in extras.items() if k.startswith(EMA_PREFIX)}
        if weights == "ema" and ema:
            tensors, meta = {**tensors, **ema}, {**meta, "weights": "ema"}
        return Checkpoint(
            state={k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)},
            extras=extras,
            config=config,
            class_counts=json.loads(meta["class_counts"]),
            class_names=json.loads(meta["class_names"]),
            epoch=int(meta["epoch"]),
            metrics=json.loads(meta.get("metrics", "{}")),
            classifier_key=meta["classifier_key"],
            meta=meta,
            path=Path(path),
        )
    except (KeyError, ValueError) as exc:
        raise UserError(f"Checkpoint {path} has damaged metadata ({exc}).") from None


def state_path(checkpoint_path: Path) -> Path:
    """The companion resume-state file of a checkpoint."""
    p = Path(checkpoint_path)
    return p.with_name(p.name.replace(".safetensors", ".state.safetensors"))


# ---------------------------------------------------------------------------------------------
# Resume state: everything beyond the weights that an exact continuation needs, as one unit.

PAUSE_ENV = "LWR_TEST_CHECKPOINT_PAUSE"  # test hook: seconds to pause after each commit phase


@dataclass
class RunState:
    """Where a run stands: epochs completed, batches done of the epoch in progress (0 at an
    epoch boundary) and the model-selection record."""

    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None


def _phase(name: str) -> None:
    """Announce a commit phase and pause when the test hook asks (kill tests aim here)."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        print(f"lwr-checkpoint: {name}", file=sys.stderr, flush=True)
        time.sleep(float(pause))


def _train_state(
    optimizer: torch.optim.Optimizer,
    loader: Any,
    run: RunState,
    sums: torch.Tensor | None,
    commit: str,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if hasattr(loader, "state_dict"):
        tensors.update({f"loader.{k}": v for k, v in loader.state_dict().items()})
    if sums is not None:
        tensors["epoch.sums"] = sums
    for idx, buf in optimizer.state_dict()["state"].items():
        for name, value in buf.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
    meta = {
        "epoch": run.epoch,
        "step": run.step,
        "best_metric": run.best_metric,
        "best_epoch": run.best_epoch,
    }
    return tensors, {"format": FORMAT + "-state", "state": json.dumps(meta), "commit": commit}


def commit_resume_point(
    ckpt_dir: Path,
    weights: tuple[dict[str, torch.Tensor], dict[str, str]],
    optimizer: torch.optim.Optimizer,
    loader: Any,
    run: RunState,
    sums: torch.Tensor | None = None,
) -> None:
    """Write `last.safetensors` + `last.state.safetensors` as one unit.

    Both are written to temp files first; then the old state moves to `.prev`, the new state
    takes its place, and the new weights last. A kill at any instant leaves the weights file
    of one save and a state file (current or `.prev`) with the same commit id."""
    commit = uuid.uuid4().hex
    tensors, meta = weights
    w_tmp = _write_temp(tensors, ckpt_dir / "last.safetensors", {**meta, "commit": commit})
    try:
        s_tensors, s_meta = _train_state(optimizer, loader, run, sums, commit)
        s_tmp = _write_temp(s_tensors, state_path(ckpt_dir / "last.safetensors"), s_meta)
    except BaseException:
        w_tmp.unlink()
        raise
    _phase("written")
    last, state, prev = _pair_paths(ckpt_dir)
    try:
        if state.exists():
            os.replace(state, prev)
        os.replace(s_tmp, state)
        _phase("state-committed")
        os.replace(w_tmp, last)
    finally:
        for tmp in (w_tmp, s_tmp):
            if tmp.exists():
                tmp.unlink()
    _phase("committed")


def _pair_paths(ckpt_dir: Path) -> tuple[Path, Path, Path]:
    last = Path(ckpt_dir) / "last.safetensors"
    return last, state_path(last), last.with_name("last.state.prev.safetensors")


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return {}


def _same_save(weights: Checkpoint, state_meta: dict[str, str]) -> bool:
    if state_meta.get("format") != FORMAT + "-state":
        return False
    if "commit" in weights.meta or "commit" in state_meta:
        return weights.meta.get("commit") == state_meta.get("commit")
    return json.loads(state_meta["state"]).get("epoch") == weights.epoch  # older files


def resume_point(ckpt_dir: Path) -> tuple[Checkpoint, Path]:
    """The weights of `last` and the state file of the same save (restored to its usual name
    when only `.prev` matches, i.e. a save died between its two renames)."""
    last, state, prev = _pair_paths(ckpt_dir)
    ckpt = load_checkpoint(last, weights="raw")
    for leftover in Path(ckpt_dir).glob(".*.tmp"):  # temp files of a save that was killed
        leftover.unlink()
    for candidate in (state, prev):
        if candidate.is_file() and _same_save(ckpt, _metadata(candidate)):
            if candidate == prev:
                os.replace(prev, state)
            return ckpt, state
    raise UserError(
        f"Cannot resume from {ckpt_dir}: last.safetensors (epoch {ckpt.epoch}, step "
        f"{ckpt.step}) has no resume-state file from the same save (last.state.safetensors is "
        "missing or belongs to another save), so optimizer and RNG state would not match the "
        "weights. The weights themselves are intact: evaluate them with 'lwr eval', or start "
        "the run again."
    )


def load_train_state(
    path: Path, optimizer: torch.optim.Optimizer, loader: Any, device: torch.device
) -> tuple[RunState, torch.Tensor | None]:
    """Restore a state file into a freshly built optimizer and loader; returns the run's
    position and, inside an epoch, the epoch's running sums so far."""
    tensors, meta_raw = _read(path)
    if meta_raw.get("format") != FORMAT + "-state":
        raise UserError(f"{path} is not an lwr resume-state file.")
    meta = json.loads(meta_raw["state"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    loader_state = {k[7:]: v for k, v in tensors.items() if k.startswith("loader.")}
    if "rng.loader" in tensors:  # files written before loader positions were saved
        loader_state = {"generator": tensors["rng.loader"], "epoch": torch.tensor([-1])}
    if loader_state and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(loader_state)
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device)
    sd["state"] = state
    optimizer.load_state_dict(sd)
    run = RunState(
        int(meta["epoch"]),
        int(meta.get("step", 0)),
        meta.get("best_metric"),
        meta.get("best_epoch"),
    )
    sums = tensors.get("epoch.sums")
    return run, (sums.to(device) if sums is not None else None)
