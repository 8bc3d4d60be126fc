"""MaxNorm on the classifier rows (weight balancing, Alshammari et al., CVPR 2022): projected
gradient descent onto per-class norm balls, run after every optimizer step.

Rows w_c (C, d) with |w_c| > δ are scaled back onto the ball, w_c <- δ w_c / |w_c|; rows
inside it are not touched (bit for bit). The bias is left alone: the authors' MaxNorm_via_PGD
gives 1-d parameters an infinite threshold. Their radius is relative, δ = n_min + t (n_max -
n_min) of the row norms when stage 2 starts (t = 0.1 in their CIFAR-100-LT demo); an
absolute δ is the other mode (`max_norm.mode`). The relative radius is resolved once,
from the head as the run starts, and saved in the checkpoint (`MAX_NORM_RADIUS`) so a resumed
run projects onto the same ball. Their demo projects once per epoch; we project after every
step, which is what projected gradient descent means (and what the paper describes).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from lwrcli.checkpoint.files import EXTRA_PREFIX
from lwrcli.config.sections import Section
from lwrcli.errors import UserError
from lwrcli.methods.base import Method, RunParts
from lwrcli.models.heads import get_classifier

# The resolved radius δ, a 0-d float64 tensor beside the model's tensors.
MAX_NORM_RADIUS = EXTRA_PREFIX + "max_norm_radius"


def relative_radius(weight: Tensor, fraction: float) -> float:
    """δ = n_min + fraction (n_max - n_min) over the row norms of weight (C, d), in float64."""
    norms = weight.detach().double().norm(dim=1)
    lo, hi = float(norms.min()), float(norms.max())
    return lo + fraction * (hi - lo)


def resolve_radius(section: Any, weight: Tensor, saved: Tensor | None = None) -> float:
    """The run's radius: the saved one on resume, else the config's (absolute) or the one the
    starting head gives (relative)."""
    assert section.radius is not None
    if saved is not None:
        return float(saved)
    if section.mode == "relative":
        return relative_radius(weight, section.radius)
    return float(section.radius)


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


class MaxNormConfig(Section):
    """After every step, classifier rows longer than a radius are scaled back onto it (bias
    untouched). The radius is `radius` (`absolute`), or, as the authors' code sets it,
    n_min + radius * (n_max - n_min) of the head's row norms when the run starts
    (`relative`, radius in (0, 1]). None: off."""

    radius: float | None = Field(None, gt=0.0, le=1e4)
    mode: Literal["absolute", "relative"] = "absolute"

    @model_validator(mode="after")
    def _relative_in_range(self) -> MaxNormConfig:
        if self.mode == "relative" and self.radius is not None and self.radius > 1:
            raise ValueError(
                f"max_norm.radius={self.radius} with max_norm.mode=relative must be in (0, 1]: "
                "the radius is n_min + radius * (n_max - n_min) of the starting row norms"
            )
        return self


class MaxNormMethod(Method):
    name, slot, key, label, config = "max_norm", "trick", "max_norm", "MaxNorm", MaxNormConfig

    def active(self, section: Any) -> bool:
        return section.radius is not None

    def acting(self, section: dict[str, Any]) -> set[str]:
        return set(section) if section.get("radius") is not None else {"radius"}

    def describe(self, section: Any) -> str:
        relative = " (relative)" if section.mode == "relative" else ""
        return f"MaxNorm {section.radius:g}{relative}"

    def check(self, cfg: Any) -> None:
        if not self.active(cfg.section("max_norm")):
            return
        head = cfg.model.head.name
        if head == "etf":
            raise ValueError(
                "max_norm.radius caps the classifier's row norms, but the ETF head's rows are "
                "fixed at unit norm: unset max_norm.radius (--set max_norm.radius=null)"
            )
        if head == "cosine":
            raise ValueError(
                "max_norm.radius caps the classifier's row norms, but a cosine classifier "
                "normalises its rows, so the norms never reach the logits: unset "
                "max_norm.radius or use a linear head (model.head.name=linear)"
            )
        if cfg.section("stage2").mode == "lws":
            raise ValueError(
                "max_norm.radius with stage2.mode=lws: LWS trains only per-class scales and "
                "keeps the classifier rows frozen, so MaxNorm would change frozen weights; "
                "unset one"
            )

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        """The projection after every step, and its radius in every checkpoint (a resumed run
        reuses its saved radius)."""
        section = cfg.section("max_norm")
        head = get_classifier(parts.raw_model).weight
        radius = saved.extras.get(MAX_NORM_RADIUS) if saved is not None else None
        if saved is not None and radius is None and section.mode == "relative":
            raise UserError(
                f"max_norm.mode=relative: this checkpoint holds no radius ({MAX_NORM_RADIUS}); "
                "it was written before MaxNorm existed."
            )
        hook = MaxNorm(head, resolve_radius(section, head, radius))
        parts.after_step.append(hook)
        parts.run_tensors.update(hook.state())


METHOD = MaxNormMethod()
