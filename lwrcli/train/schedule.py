"""Learning-rate schedule as a pure function of training progress (epochs, fractional).

Being a function of `t` alone (no scheduler object) makes resume exact and the schedule easy
to test: the trainer sets each param group's lr from `lr_at` before every step.
"""

from __future__ import annotations

import math

from lwrcli.config import ScheduleConfig


def lr_at(cfg: ScheduleConfig, base_lr: float, t: float, total_epochs: int) -> float:
    """lr at progress t in [0, total_epochs] epochs.

    Warm-up: linear from 0 to base_lr over `warmup_epochs`, per step (at the end of 0-based
    epoch e < warmup it equals base_lr * (e + 1) / warmup, the LDAM-DRW per-epoch values).
    multistep: base_lr * factors[k] from 0-based epoch milestones[k] on (factors are absolute
    multipliers, e.g. 0.01 from 160 and 0.0001 from 180). cosine: from base_lr down to min_lr
    over the epochs after warm-up.
    """
    if cfg.warmup_epochs > 0 and t < cfg.warmup_epochs:
        return base_lr * t / cfg.warmup_epochs
    if cfg.kind == "multistep":
        factor = 1.0
        epoch = math.floor(t + 1e-9)
        for milestone, f in zip(cfg.milestones, cfg.factors):
            if epoch >= milestone:
                factor = f
        return base_lr * factor
    if cfg.kind == "cosine":
        span = max(total_epochs - cfg.warmup_epochs, 1e-9)
        progress = min(max((t - cfg.warmup_epochs) / span, 0.0), 1.0)
        return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr
