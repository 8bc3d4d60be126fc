"""Optimizer construction: one factory over a name -> class mapping, so adding AdamW or
per-group learning rates touches this module and its test only."""

from __future__ import annotations

import torch
from torch import nn

from lwrcli.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer for every trainable parameter of `model` at learning rate `lr` (already
    scaled for the batch size; the schedule rescales it every step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
