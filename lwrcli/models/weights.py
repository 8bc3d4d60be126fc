"""Local pretrained weights (`model.pretrained: PATH`): never downloaded, never unpickled.

safetensors files are read as is; `.pth`/`.pt` only through `torch.load(weights_only=True)`,
which refuses pickled Python objects other than tensors and plain containers. Wrapper prefixes
(`module.` from DDP, `_orig_mod.` from torch.compile) are stripped. Head keys are left out
when their shape differs (a 1000-class file into a 7-class model) and the caller is told which;
any other key that does not fit is an error, because a silently half-loaded backbone trains
badly without anyone noticing.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lwrcli.errors import UserError
from lwrcli.models.families import AUX_PREFIXES

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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a .safetensors file or a torch.save'd state dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Pretrained weights file {path} does not exist (model.pretrained).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle at all, or a damaged one
            raise UserError(
                f"Cannot read pretrained weights {path}: not a safetensors file or a "
                "torch.save'd state dict (or it is truncated)."
            ) from None
        raise UserError(
            f"Refusing pretrained weights {path}: besides tensors it holds a pickled Python "
            f"object ({found.group(1)}), and lwr reads .pth/.pt files only with "
            "torch.load(weights_only=True) so that loading cannot run code. Save a plain state "
            "dict (torch.save(model.state_dict(), ...)) or a .safetensors file instead."
        ) from None
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


def load_pretrained(model: nn.Module, path: Path, head: str) -> PretrainedLoad:
    """Copy a local state dict into `model`; keys under `head` (attribute path of the
    classifier) are left out when absent from the model or shaped differently."""
    state = read_state_dict(path)
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


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes: the identity of local base weights (`model.pretrained`)
    that frozen-base checkpoints refer to."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
