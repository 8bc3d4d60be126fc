"""Unwrapping a model from what training wraps it in (DDP, torch.compile)."""

from __future__ import annotations

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP (`module.`) and torch.compile (`_orig_mod.`) wrappers before saving."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
