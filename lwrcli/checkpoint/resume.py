"""The resume state beside `last.safetensors`: optimizer buffers, every RNG, the loader's
position inside an epoch, and the save order that keeps a matching weights/state pair on disk
whatever instant a kill comes (`commit_resume_point`, `resume_point`)."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lwrcli.checkpoint.files import (
    FORMAT,
    Checkpoint,
    _read,
    _write_temp,
    load_checkpoint,
    state_path,
)
from lwrcli.errors import UserError

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


def frozen(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies on the host of tensors that training goes on changing in place (weights,
    optimizer buffers, running sums): what a save writes while the next steps run."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


@dataclass
class ResumePoint:
    """Everything `last` + `last.state` hold, copied at one instant (`resume_snapshot`), so
    they can be written while training goes on (`write_resume_point`)."""

    weights: dict[str, torch.Tensor]
    weights_meta: dict[str, str]
    state: dict[str, torch.Tensor]
    state_meta: dict[str, str]


def resume_snapshot(
    weights: tuple[dict[str, torch.Tensor], dict[str, str]],
    optimizer: torch.optim.Optimizer,
    loader: Any,
    run: RunState,
    sums: torch.Tensor | None = None,
) -> ResumePoint:
    """A copy of the weights and of the resume state as they are now."""
    state, meta = _train_state(optimizer, loader, run, sums)
    return ResumePoint(frozen(weights[0]), dict(weights[1]), frozen(state), meta)


def _train_state(
    optimizer: torch.optim.Optimizer,
    loader: Any,
    run: RunState,
    sums: torch.Tensor | None,
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
    return tensors, {"format": FORMAT + "-state", "state": json.dumps(meta)}


def commit_resume_point(
    ckpt_dir: Path,
    weights: tuple[dict[str, torch.Tensor], dict[str, str]],
    optimizer: torch.optim.Optimizer,
    loader: Any,
    run: RunState,
    sums: torch.Tensor | None = None,
) -> None:
    """Write `last.safetensors` + `last.state.safetensors` as one unit, now
    (`write_resume_point` of a `resume_snapshot`)."""
    write_resume_point(ckpt_dir, resume_snapshot(weights, optimizer, loader, run, sums))


def write_resume_point(ckpt_dir: Path, point: ResumePoint) -> None:
    """Write a snapshot as `last.safetensors` + `last.state.safetensors`, as one unit.

    Both are written to temp files first; then the old state moves to `.prev`, the new state
    takes its place, and the new weights last. A kill at any instant leaves the weights file
    of one save and a state file (current or `.prev`) with the same commit id."""
    commit = uuid.uuid4().hex
    last = Path(ckpt_dir) / "last.safetensors"
    w_tmp = _write_temp(point.weights, last, {**point.weights_meta, "commit": commit})
    try:
        s_meta = {**point.state_meta, "commit": commit}
        s_tmp = _write_temp(point.state, state_path(last), s_meta)
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
