"""Checkpoints as safetensors only (no pickle anywhere), written atomically.

`NAME.safetensors` holds the unwrapped model weights plus metadata (config, class counts and
names, epoch, metrics, which tensor is the classifier). `NAME.state.safetensors` holds what an
exact resume needs: optimizer buffers, RNG states, step counters.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lwrcli import __version__
from lwrcli.config import TrainConfig, validate_config
from lwrcli.errors import UserError

FORMAT = "lwr-checkpoint-1"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP (`module.`) and torch.compile (`_orig_mod.`) wrappers before saving."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file into a temp file in the same folder, then rename: readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(contiguous, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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

    @property
    def classifier_weight(self) -> torch.Tensor:
        """(C, d) class weight vectors, bias excluded."""
        return self.state[self.classifier_key]

    @property
    def label(self) -> str:
        """A short name for plots and tables: the run folder's name, else the file's."""
        if self.path is None:
            return self.config.name
        parent = self.path.parent
        if parent.name == "checkpoints":
            return parent.parent.name
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
) -> None:
    state = unwrap(model).state_dict()
    meta = {
        "format": FORMAT,
        "tool_version": __version__,
        "config": config.model_dump_json(),
        "class_counts": json.dumps(list(map(int, class_counts))),
        "class_names": json.dumps(list(class_names)),
        "epoch": str(int(epoch)),
        "metrics": json.dumps(metrics),
        "classifier_key": classifier_key,
        **(extra or {}),
    }
    if classifier_key not in state:
        raise ValueError(f"classifier key {classifier_key!r} not in the model's state")
    atomic_save(dict(state), path, meta)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.is_dir():
            hint = f" It is a folder; did you mean {path / 'checkpoints' / 'last.safetensors'}?"
        raise UserError(f"Checkpoint {path} does not exist.{hint}")
    try:
        from safetensors import safe_open

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


def load_checkpoint(path: Path) -> Checkpoint:
    tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise UserError(
            f"{path} is a safetensors file but not an lwr checkpoint (no '{FORMAT}' metadata)."
        )
    try:
        config = validate_config(json.loads(meta["config"]), source=f"checkpoint {path}")
        return Checkpoint(
            state=tensors,
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


@dataclass
class RunState:
    """Where a run stands: epochs completed and the model-selection record."""

    epoch: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, buf in optimizer.state_dict()["state"].items():
        for name, value in buf.items():
            if isinstance(value, torch.Tensor):
                out[f"optim.{idx}.{name}"] = value
    return out


def save_train_state(
    path: Path, optimizer: torch.optim.Optimizer, loader: Any, run: RunState
) -> None:
    """Optimizer buffers, the global and the loader's RNG, and the run's progress."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    loader_state = getattr(loader, "state", None)
    if callable(loader_state):
        tensors["rng.loader"] = loader_state()
    tensors.update(_optimizer_tensors(optimizer))
    meta = {"epoch": run.epoch, "best_metric": run.best_metric, "best_epoch": run.best_epoch}
    atomic_save(tensors, path, {"format": FORMAT + "-state", "state": json.dumps(meta)})


def load_train_state(
    path: Path, optimizer: torch.optim.Optimizer, loader: Any, device: torch.device
) -> RunState:
    """Restore what `save_train_state` wrote into a freshly built optimizer and loader."""
    tensors, meta_raw = _read(path)
    if meta_raw.get("format") != FORMAT + "-state":
        raise UserError(f"{path} is not an lwr resume-state file.")
    meta = json.loads(meta_raw["state"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.loader" in tensors and hasattr(loader, "load_state"):
        loader.load_state(tensors["rng.loader"])
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device)
    sd["state"] = state
    optimizer.load_state_dict(sd)
    return RunState(int(meta["epoch"]), meta.get("best_metric"), meta.get("best_epoch"))
