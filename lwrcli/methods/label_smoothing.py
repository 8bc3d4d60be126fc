"""Label smoothing (Szegedy et al.) and MiSLAS's label-aware smoothing (Zhong et al., CVPR
2021, github.com/dvlab-research/MiSLAS, `LabelAwareSmoothing`), section `label_smoothing:`.

The target becomes (1 - ε_y) e_y + ε_y / C, which with CE is MiSLAS's (1 - ε_y) NLL +
ε_y mean_c(-log p_c). Smoothing is linear in the target, so a mixed target q (mixup, CutMix:
applied first) becomes Σ_c q_c [(1 - ε_c) e_c + ε_c / C].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import Section
from lwrcli.errors import UserError
from lwrcli.methods.base import Method, RunParts
from lwrcli.methods.mixing import require_soft_targets


def label_aware_epsilon(
    class_counts: Sequence[int] | Tensor, head: float, tail: float, shape: str, power: float = 1.0
) -> Tensor:
    """MiSLAS's ε_c (C,) float64: `tail` for the rarest class (n_K) up to `head` for the most
    frequent (n_1), along f(x), x = (n_c - n_K) / (n_1 - n_K):
    concave ε = tail + (head - tail) sin(π x / 2); linear ε = tail + (head - tail) x;
    convex ε = head + (head - tail) sin(3π/2 + π x / 2); exp ε = tail + (head - tail) x^power.
    Equal counts (no head, no tail) give `head` for every class."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    n1, nk = n.max(), n.min()
    if n1 == nk:
        return torch.full_like(n, head)
    x = (n - nk) / (n1 - nk)
    if shape == "concave":
        return tail + (head - tail) * torch.sin(x * math.pi / 2)
    if shape == "linear":
        return tail + (head - tail) * x
    if shape == "convex":
        return head + (head - tail) * torch.sin(1.5 * math.pi + x * math.pi / 2)
    if shape == "exp":
        return tail + (head - tail) * x.pow(power)
    raise ValueError(f"unknown label smoothing shape {shape!r}")


def smoothing_epsilon(section: Any, class_counts: Sequence[int] | Tensor) -> Tensor | None:
    """ε per class (C,) float64 from the `label_smoothing` section, or None when it is off."""
    if not section.active:
        return None
    c = len(class_counts)
    if section.tail is None:
        return torch.full((c,), section.epsilon, dtype=torch.float64)
    return label_aware_epsilon(
        class_counts, section.epsilon, section.tail, section.shape, section.power
    )


def smooth(target: Tensor, epsilon: Tensor) -> Tensor:
    """Soft targets (N, C) -> Σ_c q_c [(1 - ε_c) e_c + ε_c / C]; epsilon (C,) on their device."""
    eps = epsilon.to(target.dtype)
    return target * (1.0 - eps) + (target @ eps)[:, None] / target.shape[1]


class Smoother:
    """(x, targets) -> (x, smoothed (N, C) float32): class ids become one-hot first."""

    def __init__(self, epsilon: Tensor, num_classes: int) -> None:
        self.epsilon, self.num_classes = epsilon, num_classes

    def __call__(self, x: Tensor, y: Tensor, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        target = F.one_hot(y, self.num_classes).float() if y.dim() == 1 else y.float()
        if self.epsilon.device != target.device:
            self.epsilon = self.epsilon.to(target.device)
        return x, smooth(target, self.epsilon)


class LabelSmoothingConfig(Section):
    """ε for every class (`epsilon`), or with `tail` MiSLAS's label-aware ε_y, from `epsilon`
    for the most frequent class to `tail` for the rarest along `shape` (exp: power p)."""

    epsilon: float = Field(0.0, ge=0.0, lt=1.0)
    tail: float | None = Field(None, ge=0.0, lt=1.0)
    shape: Literal["concave", "linear", "convex", "exp"] = "concave"
    power: float = Field(1.0, gt=0.0, le=100.0, description="shape exp only")

    @property
    def active(self) -> bool:
        return self.epsilon > 0 or bool(self.tail)


class LabelSmoothingMethod(Method):
    name, slot, key, label = "label_smoothing", "trick", "label_smoothing", "label smoothing"
    config = LabelSmoothingConfig

    def active(self, section: Any) -> bool:
        return section.active

    def acting(self, section: dict[str, Any]) -> set[str]:
        if not self.active(self.config.model_validate(section)):
            return {"epsilon", "tail"}
        return set(section) if section.get("tail") is not None else {"epsilon"}

    def describe(self, section: Any) -> str:
        if section.tail is None:
            return f"label smoothing {section.epsilon:g}"
        return f"label-aware smoothing {section.epsilon:g}..{section.tail:g} ({section.shape})"

    def check(self, cfg: Any) -> None:
        if self.active(cfg.section("label_smoothing")):
            require_soft_targets(cfg, "label smoothing")

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        section = cfg.section("label_smoothing")
        epsilon = smoothing_epsilon(section, parts.data.class_counts)
        assert epsilon is not None
        if bool((epsilon > 1.0).any() or (epsilon < 0.0).any()):
            raise UserError(
                f"Label smoothing gives some class an ε outside [0, 1] (shape {section.shape}, "
                f"head {section.epsilon}, tail {section.tail}); choose head and tail values in "
                "[0, 1)."
            )
        parts.batch_transforms.append(Smoother(epsilon, parts.data.num_classes))


METHOD = LabelSmoothingMethod()
