"""Softmax equalization loss (Tan et al., "Equalization Loss for Long-Tailed Object
Recognition", CVPR 2020; SEQL, sometimes ESQL in tables): the formula, its random draw, and
the loss as a method.

    p̃_j = e^{z_j} / Σ_k w̃_k e^{z_k},   w̃_k = 1 - β T_λ(f_k) (1 - y_k),   loss = -log p̃_y

with f_k = n_k / Σ n the class frequency, T_λ(f) = 1 for f < λ (a tail class) and β a
Bernoulli(γ) variable. A tail class that is not the target thus leaves the denominator with
probability γ, and with it the discouraging gradient a head sample sends to rare classes;
γ < 1 keeps some of it. β is drawn per sample and class (the reading of the public
image-classification implementations). As w̃_k ∈ {0, 1}, the loss is exactly CE on the logits
with the dropped entries set to -inf, whose gradient there is zero.

The draw must not depend on the process's random state, which the evaluation, other
components and resume all touch: it comes from a generator seeded by (run seed, epoch, step,
call within the step, rank), so a resumed run draws the same β at the same step.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.losses import Counts, CountsLoss, LossMethod


def tail_classes(counts: Tensor, threshold: float) -> Tensor:
    """T_λ(f_k): classes whose frequency n_k / Σ n is below `threshold`, (C,) bool."""
    counts = counts.double()
    return counts / counts.sum().clamp_min(1.0) < threshold


def position_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, step, ...), stable across processes and
    Python versions (unlike hash() of str), well mixed so neighbouring steps look unrelated."""
    text = ":".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def draw_drops(
    target: Tensor, tail: Tensor, gamma: float, seed: int, device: torch.device
) -> Tensor:
    """Which logits leave the denominator: (N, C) bool, β T_λ (1 - y) with β ~ Bernoulli(γ)
    per sample and class from a generator seeded with `seed` (only tail columns are drawn)."""
    n, c = target.shape[0], tail.numel()
    drop = torch.zeros((n, c), dtype=torch.bool, device=device)
    cols = tail.nonzero().flatten().to(device)
    if cols.numel() == 0 or gamma <= 0.0:
        return drop
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    beta = torch.rand((n, cols.numel()), generator=gen, device=device) < gamma
    drop[:, cols] = beta
    drop[torch.arange(n, device=device), target] = False  # (1 - y_k): never the target
    return drop


def equalized_cross_entropy(
    z: Tensor, target: Tensor, drop: Tensor, weight: Tensor | None
) -> Tensor:
    """-log p̃_y with the `drop`ped logits (N, C) bool out of the denominator; the reduction
    of F.cross_entropy (a weighted mean with `weight` (C,))."""
    return F.cross_entropy(z.masked_fill(drop, float("-inf")), target, weight=weight)


class SoftmaxEqualizationLoss(CountsLoss):
    """SEQL: CE whose denominator drops each non-target tail class
    (frequency < λ) with probability γ, drawn per sample and class from a generator seeded by
    (run seed, epoch, step, call within the step, rank) — the same draws on a resumed run."""

    def __init__(self, class_counts: Counts, gamma: float, threshold: float) -> None:
        super().__init__(class_counts)
        self.gamma, self.threshold = float(gamma), float(threshold)
        self.register_buffer("tail", tail_classes(self.class_counts, self.threshold))
        self.position = (0, 0)
        self.calls = 0  # forward calls at this position (micro-batches of one step)

    def set_position(self, epoch: int, step: int) -> None:
        self.position, self.calls = (int(epoch), int(step)), 0

    def draw_seed(self) -> int:
        """The generator seed of the next call (and count the call)."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        seed = position_seed(self.seed, *self.position, self.calls, rank)
        self.calls += 1
        return seed

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        drop = draw_drops(target, self.tail, self.gamma, self.draw_seed(), z.device)
        return equalized_cross_entropy(z, target, drop, weight)


class SEQLConfig(LossSection):
    """Each non-target class with frequency n_c / sum(n) below `threshold` (λ) leaves the
    softmax's denominator with probability `gamma` (γ), drawn per sample and class."""

    name: Literal["seql"] = "seql"
    gamma: float = Field(0.9, ge=0.0, le=1.0, description="γ: probability of leaving")
    threshold: float = Field(0.005, ge=0.0, le=1.0, description="λ: tail class frequency")


class SEQLMethod(LossMethod):
    name, label, config, loss_class = "seql", "SEQL", SEQLConfig, SoftmaxEqualizationLoss

    def describe(self, section: Any) -> str:
        return f"SEQL (γ={section.gamma:g}, λ={section.threshold:g})"

    def make(self, section: Any, class_counts: Tensor) -> CountsLoss:
        return SoftmaxEqualizationLoss(class_counts, section.gamma, section.threshold)


METHOD = SEQLMethod()
