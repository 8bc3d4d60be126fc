"""Post-hoc classifier adjustments on fixed features: τ-normalisation (with the bias dropped,
as the reference does, or kept) and logit adjustment, and choosing τ on a validation split.

Working on the head's input features means one backbone pass per split, after which every τ
of the grid costs a matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from lwrcli.methods.losses import posthoc_logit_adjust, tau_normalize

# τ candidates: 0, 0.1, ..., 2.0 (the decoupling paper's range).
TAU_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(21))


def head_logits(
    head: nn.Module, features: torch.Tensor, tau_norm: float | None = None, keep_bias: bool = False
) -> torch.Tensor:
    """Logits (N, C) of `head` on features (N, d), with its weight τ-normalised when asked.
    τ-norm drops the bias unless `keep_bias` (Kang et al.'s code builds the normalised
    classifier without bias: a head-favouring bias would undo the normalisation)."""
    if tau_norm is None:
        return head(features).float()
    params = dict(head.named_parameters())
    # head.weight, not params["weight"]: a fixed ETF head keeps its rows in a buffer.
    params["weight"] = tau_normalize(head.weight.detach(), tau_norm)
    bias = params.get("bias")
    if bias is not None and not keep_bias:
        params["bias"] = torch.zeros_like(bias)
    return functional_call(head, params, (features,)).float()


def bias_treatment(head: nn.Module, keep_bias: bool) -> str:
    if getattr(head, "bias", None) is None:
        return "no bias"
    return "bias kept" if keep_bias else "bias dropped"


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == targets).double().mean())


@dataclass
class Search:
    """τ picked on a validation split: the grid, the val top-1 at each τ, the pick."""

    grid: list[float]
    val_top1: list[float]
    tau: float = field(init=False)

    def __post_init__(self) -> None:
        best = max(self.val_top1)
        self.tau = self.grid[self.val_top1.index(best)]  # the smallest τ among ties

    def record(self, split: str) -> dict[str, object]:
        return {"picked_on": split, "tau": self.tau, "grid": self.grid, "val_top1": self.val_top1}


def search_tau_norm(
    head: nn.Module, features: torch.Tensor, targets: torch.Tensor, keep_bias: bool
) -> Search:
    scores = [top1(head_logits(head, features, t, keep_bias), targets) for t in TAU_GRID]
    return Search(list(TAU_GRID), scores)


def search_posthoc(logits: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> Search:
    prior = torch.tensor(counts, dtype=torch.float64)
    scores = [top1(posthoc_logit_adjust(logits, prior, t), targets) for t in TAU_GRID]
    return Search(list(TAU_GRID), scores)
