"""Softmax equalization loss (Tan et al., "Equalization Loss for Long-Tailed Object
Recognition", CVPR 2020; SEQL, sometimes ESQL in tables): the formula and its random draw.

    p̃_j = e^{z_j} / Σ_k w̃_k e^{z_k},   w̃_k = 1 - β T_λ(f_k) (1 - y_k),   loss = -log p̃_y

with f_k = n_k / Σ n the class frequency, T_λ(f) = 1 for f < λ (a tail class) and β a
Bernoulli(γ) variable. A tail class that is not the target thus leaves the denominator with
probability γ, and with it the discouraging gradient a head sample sends to rare classes;
γ < 1 keeps some of it. β is drawn per sample and class (the reading of the public
image-classification implementations). As w̃_k ∈ {0, 1}, the loss is exactly CE on the logits
with the dropped entries set to -inf, whose gradient there is zero.

The draw must not depend on the process's random state, which the evaluation, other
components and resume all touch: it comes from a generator seeded by (run seed, epoch, step,
call within the step, rank), so a resumed run draws the same β at the same step. The lowest
room: imports only torch.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor


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
