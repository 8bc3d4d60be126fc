"""Post-hoc classifier adjustments on fixed features: τ-normalisation (with the bias dropped,
as the reference does, or kept) and logit adjustment, and choosing τ on a validation split.

`Adjustment` is the one place `lwr eval` and `lwr predict` apply them (the same options,
`--tau-norm T [--keep-bias]` and `--posthoc-tau T`, combinable: τ-norm of the classifier
first, then z - τ log π), so a pair eval picks gives the same logits in predict.

Working on the head's input features means one backbone pass per split, after which every τ
of the grid costs a matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def crop_logits(
    head: nn.Module, features: torch.Tensor, tau_norm: float | None, keep_bias: bool
) -> torch.Tensor:
    """head_logits of features (N, d), or of test-time-ensemble features (N, K, d) averaged
    over the K crops."""
    if features.dim() == 2:
        return head_logits(head, features, tau_norm, keep_bias)
    n, k, _ = features.shape
    return head_logits(head, features.flatten(0, 1), tau_norm, keep_bias).view(n, k, -1).mean(1)


@dataclass(frozen=True)
class Adjustment:
    """The post-hoc adjustments of one eval or predict call: τ-norm of the classifier
    (`tau_norm`, bias dropped unless `keep_bias`), then logit adjustment by the train prior
    (`posthoc_tau`); None: not applied."""

    tau_norm: float | None = None
    posthoc_tau: float | None = None
    keep_bias: bool = False

    def check(self, counts: Sequence[int]) -> None:
        """Fail now, before any image is read, where the prior has an empty class."""
        if self.posthoc_tau is not None:
            posthoc_logit_adjust(torch.zeros(1, len(counts)), _prior(counts), self.posthoc_tau)

    def logits(
        self, head: nn.Module, features: torch.Tensor, counts: Sequence[int]
    ) -> torch.Tensor:
        """Logits (N, C) on the CPU of features (N, d) or crops (N, K, d): τ-norm, crops
        averaged, then z - τ log π with π the train counts `counts`."""
        logits = crop_logits(head, features, self.tau_norm, self.keep_bias).cpu()
        if self.posthoc_tau is None:
            return logits
        return posthoc_logit_adjust(logits, _prior(counts), self.posthoc_tau)

    def record(self, head: nn.Module, picked_on: dict[str, str] | None = None) -> dict:
        """What the summaries of eval and predict say: `adjustment` in words, and the values
        (`picked_on`: "tau_norm"/"posthoc_tau" -> the split a τ was picked on)."""
        picked = {k: f" (picked on {v})" for k, v in (picked_on or {}).items()}
        words, bias = [], None
        if self.tau_norm is not None:
            bias = bias_treatment(head, self.keep_bias)
            words.append(f"τ-norm {self.tau_norm:g}{picked.get('tau_norm', '')}, {bias}")
        if self.posthoc_tau is not None:
            tau = f"{self.posthoc_tau:g}{picked.get('posthoc_tau', '')}"
            words.append(f"post-hoc logit adjustment τ={tau}")
        return {
            "adjustment": "; ".join(words) or "none (raw logits)",
            "tau_norm": self.tau_norm,
            "tau_norm_bias": bias,
            "posthoc_tau": self.posthoc_tau,
        }


def _prior(counts: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(counts), dtype=torch.float64)


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
    prior = _prior(counts)
    scores = [top1(posthoc_logit_adjust(logits, prior, t), targets) for t in TAU_GRID]
    return Search(list(TAU_GRID), scores)
