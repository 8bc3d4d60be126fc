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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lwrcli import __version__
from lwrcli.checkpoint.frozen_base import stored_state
from lwrcli.config import TrainConfig, validate_config
from lwrcli.errors import UserError
from lwrcli.runtime.files import fix_mode, temp_beside
from lwrcli.runtime.modules import unwrap
from lwrcli.runtime.runname import run_name

FORMAT = "lwr-checkpoint-1"
# Tensors of a checkpoint file that belong to the run, not to the model's state dict.
EXTRA_PREFIX = "lwr_state."
# `theta: init`: the head's unit rows at initialisation, each pair's margin (C, d).
THETA_REFERENCE = EXTRA_PREFIX + "theta_reference"
# `ema`: the moving average of each stored model tensor, and its counters (lwrcli.methods.ema).
EMA_PREFIX, EMA_STEPS = EXTRA_PREFIX + "ema.", EXTRA_PREFIX + "ema_steps"


def _write_temp(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """save_file into a temp file beside `path`, flushed to disk; removed again on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(contiguous, str(tmp), metadata=metadata)
        fix_mode(tmp)  # save_file writes 0600; the umask's mode, as for every file lwr writes
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


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
    def classifier_keys(self) -> list[str]:
        """Every classifier weight's key: K for a model with K heads (the metadata's
        `classifier_keys`), else the one `classifier_key`."""
        keys = json.loads(self.meta.get("classifier_keys") or "null")
        return list(keys) if keys else [self.classifier_key]

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
