"""Pretrained weights files: reading them safely, and the identity of the base a model was
built from. Local files (`model.pretrained: PATH`) are never downloaded; named weights
(`model.weights`) are fetched into the hub caches by lwrcli.models.hub and read here.

safetensors files are read as is; `.pth`/`.pt` only through `torch.load(weights_only=True)`,
which refuses pickled Python objects other than tensors and plain containers. Wrapper prefixes
(`module.` from DDP, `_orig_mod.` from torch.compile) are stripped. Head keys are left out
when their shape differs (a 1000-class file into a 7-class model) and the caller is told which;
any other key that does not fit is an error, because a silently half-loaded backbone trains
badly without anyone noticing.

Base-weights identity (for checkpoints of runs whose pretrained base stays frozen):
`base_identity(cfg.model)` (lwrcli.models.factory) -> {"name", "sha256", "file"} or None when
the model starts from random weights. `name` is `model.weights` qualified by the model
(`clip:ViT-B-16@openai`, `torchvision:resnet152@IMAGENET1K_V1`,
`timm:vit_base_patch16_clip_224@openai`) or the local file's path; `sha256` is the hex digest
of the file actually loaded; `file` where it lay on this machine (informational: compare
`sha256`, not paths). `build_model` records the same dict on
the model as `model.lwr_base` (see `base_of`). Hashes are cached in-process by file path,
mtime and size, so a run hashes a 600 MB file once.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lwrcli.errors import UserError

# Auxiliary classifier heads of some torchvision models (Inception, GoogLeNet): never loaded.
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
NESTED_KEYS = ("state_dict", "model", "module")  # training checkpoints that wrap the weights


@dataclass
class PretrainedLoad:
    path: Path
    loaded: int  # tensors copied into the model
    skipped: list[str] = field(default_factory=list)  # "key (why)", head and aux keys

    def message(self) -> str:
        text = f"Loaded {self.loaded} tensors from {self.path}"
        if not self.skipped:
            return text + "."
        shown = "; ".join(self.skipped[:6]) + ("; ..." if len(self.skipped) > 6 else "")
        return f"{text}; left out {len(self.skipped)} (trained from scratch): {shown}."


def strip_prefixes(key: str) -> str:
    """'module._orig_mod.fc.weight' -> 'fc.weight'."""
    while key.startswith(WRAPPER_PREFIXES):
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
    return key


@contextlib.contextmanager
def refusing_pickles(path: Path) -> Iterator[None]:
    """Turn torch.load(weights_only=True)'s refusal inside the block (ours, timm's or
    open_clip's reader) into a UserError naming the pickled global."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle at all, or a damaged one
            raise UserError(
                f"Cannot read pretrained weights {path}: not a safetensors file or a "
                "torch.save'd state dict (or it is truncated)."
            ) from None
        raise UserError(
            f"Refusing pretrained weights {path}: besides tensors it holds a pickled Python "
            f"object ({found.group(1)}), and lwr reads .pth/.pt/.bin files only with "
            "torch.load(weights_only=True) so that loading cannot run code. Save a plain state "
            "dict (torch.save(model.state_dict(), ...)) or a .safetensors file instead."
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a .safetensors file or a torch.save'd state dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Pretrained weights file {path} does not exist (model.pretrained).")
    with refusing_pickles(path):
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise  # refusing_pickles explains it
        except Exception as exc:  # any other reader failure is a bad file from the user
            raise UserError(f"Cannot read pretrained weights {path}: {exc}") from None
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise UserError(f"Pretrained weights {path} do not hold a state dict of tensors.")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(
            f"Pretrained weights {path} mix tensors with other values (e.g. {bad[:3]}); "
            "expected a plain state dict."
        )
    return {strip_prefixes(str(k)): v for k, v in state.items()}


def load_pretrained(
    model: nn.Module,
    path: Path,
    head: str,
    fix: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> PretrainedLoad:
    """Copy a local state dict into `model`; keys under `head` (attribute path of the
    classifier) are left out when absent from the model or shaped differently. `fix` renames
    keys first (files published before the architecture's module names changed)."""
    state = read_state_dict(path)
    if fix is not None:
        state = fix(state)
    target = model.state_dict()
    head_prefix = head + "."
    keep: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in state.items():
        in_head = key.startswith(head_prefix)
        if key not in target:
            if in_head or key.startswith(AUX_PREFIXES):
                skipped.append(f"{key} (not in this model)")
            else:
                unexpected.append(key)
        elif target[key].shape != value.shape:
            shapes = f"{tuple(value.shape)} in the file, {tuple(target[key].shape)} here"
            if in_head:
                skipped.append(f"{key} ({shapes})")
            else:
                mismatched.append(f"{key}: {shapes}")
        else:
            keep[key] = value
    missing = [k for k in target if k not in keep and not k.startswith(head_prefix)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model keys missing from the file (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} keys with another shape (e.g. {mismatched[:2]})")
        raise UserError(
            f"Pretrained weights {path} do not fit the model: {'; '.join(parts)}. Is the file "
            "for this architecture (same torchvision/timm name)?"
        )
    model.load_state_dict(keep, strict=False)
    return PretrainedLoad(Path(path), len(keep), skipped)


# --- base-weights identity -----------------------------------------------------------------

_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, cached in-process by (resolved path, mtime, size)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def identity(name: str, path: Path) -> dict[str, str]:
    """{"name", "sha256", "file"} of the weights file `path` known as `name`."""
    return {"name": name, "sha256": file_sha256(path), "file": str(Path(path).resolve())}


def base_of(model: nn.Module) -> dict[str, str] | None:
    """The base identity `build_model` recorded on `model` (None: random initialisation)."""
    return getattr(model, "lwr_base", None)
