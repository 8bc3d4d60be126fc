"""MaxNorm on the classifier rows (weight balancing, Alshammari et al., CVPR 2022): projected
gradient descent onto per-class norm balls, run after every optimizer step.

Rows w_c (C, d) with |w_c| > δ are scaled back onto the ball, w_c <- δ w_c / |w_c|; rows
inside it are not touched (bit for bit). The bias is left alone: the authors' MaxNorm_via_PGD
gives 1-d parameters an infinite threshold. Their radius is relative, δ = n_min + t (n_max -
n_min) of the row norms when stage 2 starts (t = 0.1 in their CIFAR-100-LT demo); an
absolute δ is the other mode (`optim.max_norm_mode`). The relative radius is resolved once,
from the head as the run starts, and saved in the checkpoint (`MAX_NORM_RADIUS`) so a resumed
run projects onto the same ball. Their demo projects once per epoch; we project after every
step, which is what projected gradient descent means (and what the paper describes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lwrcli.config.schema import OptimConfig
from lwrcli.train.checkpoint import EXTRA_PREFIX

# The resolved radius δ, a 0-d float64 tensor beside the model's tensors.
MAX_NORM_RADIUS = EXTRA_PREFIX + "max_norm_radius"


def relative_radius(weight: Tensor, fraction: float) -> float:
    """δ = n_min + fraction (n_max - n_min) over the row norms of weight (C, d), in float64."""
    norms = weight.detach().double().norm(dim=1)
    lo, hi = float(norms.min()), float(norms.max())
    return lo + fraction * (hi - lo)


def resolve_radius(cfg: OptimConfig, weight: Tensor, saved: Tensor | None = None) -> float:
    """The run's radius: the saved one on resume, else the config's (absolute) or the one the
    starting head gives (relative)."""
    assert cfg.max_norm is not None
    if saved is not None:
        return float(saved)
    if cfg.max_norm_mode == "relative":
        return relative_radius(weight, cfg.max_norm)
    return float(cfg.max_norm)


# Projected rows land this fraction inside the ball, so rounding to float32 never leaves one
# outside it (each element rounds by at most 2^-24 relative).
_INSIDE = 1.0 - 2.0**-22


@torch.no_grad()
def project_rows(weight: Tensor, radius: float) -> None:
    """In place: rows of weight (C, d) whose norm (float64) exceeds `radius` are scaled onto
    the ball; the rest are untouched. Rows are selected and rewritten by index, so a row inside
    the ball keeps its exact bits."""
    norms = weight.detach().double().norm(dim=1)
    over = (norms > radius).nonzero().flatten()
    if over.numel():
        scale = radius * _INSIDE / norms[over]
        weight[over] = (weight[over].double() * scale[:, None]).to(weight.dtype)


class MaxNorm:
    """The after-step hook: `MaxNorm(weight, δ)()` projects the rows of `weight` (the head's
    parameter, (C, d)) onto the ball of radius δ."""

    def __init__(self, weight: Tensor, radius: float) -> None:
        self.weight = weight
        self.radius = float(radius)

    def __call__(self) -> None:
        project_rows(self.weight, self.radius)

    def state(self) -> dict[str, Tensor]:
        """What a checkpoint stores so a resumed run uses the same radius."""
        return {MAX_NORM_RADIUS: torch.tensor(self.radius, dtype=torch.float64)}
