"""Long-tailed task losses. Each is a small module holding `class_counts` as a buffer.

All take logits (N, C), targets (N,) and an optional per-class weight (C,) that re-weights
samples exactly like `F.cross_entropy(weight=...)` (a weighted mean). Re-weighting itself
(class-balanced, deferred) is a schedule outside the loss: `reweight_for_epoch`. Losses are
computed in float32 even when the logits come from a bf16 autocast region.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.config import LossConfig
from lwrcli.errors import UserError


def _counts_tensor(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(class_counts, dtype=torch.float64).detach().clone()


def require_positive_counts(counts: torch.Tensor, what: str) -> None:
    """log n and 1/n are undefined for an empty class: say which classes, not a NaN later."""
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise UserError(
            f"{what} needs at least one training image per class, but {len(empty)} classes "
            f"have none (class ids {shown}). Use a split where every class has images, or a "
            "loss that does not depend on class frequencies (ce, focal)."
        )


class _CountsLoss(nn.Module):
    def __init__(self, class_counts: Sequence[int] | torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("class_counts", _counts_tensor(class_counts).float())

    def log_prior(self) -> torch.Tensor:
        """log π_c = log(n_c / Σ n), (C,)."""
        counts = self.class_counts
        return torch.log(counts / counts.sum())


class CrossEntropy(_CountsLoss):
    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=weight)


class FocalLoss(_CountsLoss):
    """(1 − p_t)^γ · CE_t, averaged over samples as in the LDAM-DRW code (γ = 0: CE)."""

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, gamma: float) -> None:
        super().__init__(class_counts)
        self.gamma = gamma

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        ce = -logp
        if weight is not None:
            ce = ce * weight[target]
        if self.gamma == 0:
            return ce.mean()
        # 1 − p_t = −expm1(log p_t): exact when p_t → 1, where 1 − exp() would lose it all.
        one_minus_p = (-torch.expm1(logp)).clamp_min(0)
        return (one_minus_p**self.gamma * ce).mean()


class LDAMLoss(_CountsLoss):
    """Label-distribution-aware margins on cosine logits (values in [−1, 1]).

    m_c = max_m · (n_min / n_c)^(1/4), subtracted from the target logit only, then
    CE(s · logits). The model must use a cosine classifier; the scale s lives here.
    """

    def __init__(self, class_counts, max_m: float, s: float) -> None:
        super().__init__(class_counts)
        require_positive_counts(self.class_counts, "LDAM")
        quarter = self.class_counts.double() ** -0.25
        self.register_buffer("margins", (quarter * (max_m / quarter.max())).float())
        self.s = s

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = logits.float()
        margin = torch.zeros_like(z).scatter_(1, target[:, None], self.margins[target][:, None])
        return F.cross_entropy(self.s * (z - margin), target, weight=weight)


class BalancedSoftmax(_CountsLoss):
    """CE(z + log n): the softmax of the training (long-tailed) label distribution."""

    def __init__(self, class_counts) -> None:
        super().__init__(class_counts)
        require_positive_counts(self.class_counts, "Balanced Softmax")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = logits.float() + torch.log(self.class_counts)
        return F.cross_entropy(z, target, weight=weight)


class LogitAdjustment(_CountsLoss):
    """CE(z + τ log π) (Menon et al.); τ = 1 equals Balanced Softmax, τ = 0 plain CE."""

    def __init__(self, class_counts, tau: float) -> None:
        super().__init__(class_counts)
        require_positive_counts(self.class_counts, "Logit adjustment")
        self.tau = tau

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.tau * self.log_prior(), target, weight=weight)


LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropy,
    "focal": FocalLoss,
    "ldam": LDAMLoss,
    "bs": BalancedSoftmax,
    "la": LogitAdjustment,
}


def build_loss(cfg: LossConfig, class_counts: Sequence[int] | torch.Tensor) -> nn.Module:
    counts = _counts_tensor(class_counts)
    if cfg.reweight != "none":
        require_positive_counts(counts, f"Class-balanced re-weighting ({cfg.reweight})")
    if cfg.name == "focal":
        return FocalLoss(counts, cfg.focal_gamma)
    if cfg.name == "ldam":
        return LDAMLoss(counts, cfg.ldam_max_m, cfg.ldam_s)
    if cfg.name == "la":
        return LogitAdjustment(counts, cfg.la_tau)
    return LOSSES[cfg.name](counts)


def class_balanced_weights(class_counts: Sequence[int] | torch.Tensor, beta: float) -> torch.Tensor:
    """Effective-number weights w_c = (1 − β) / (1 − β^n_c), normalised to sum to C (float64)."""
    counts = _counts_tensor(class_counts)
    require_positive_counts(counts, "Class-balanced re-weighting")
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return w / w.sum() * len(counts)


def reweight_for_epoch(
    cfg: LossConfig, class_counts: Sequence[int] | torch.Tensor, epoch: int
) -> torch.Tensor | None:
    """Per-class weights for 0-based `epoch`: none, always (cb), or from drw_epoch on (drw)."""
    if cfg.reweight == "none" or (cfg.reweight == "drw" and epoch < cfg.drw_epoch):
        return None
    return class_balanced_weights(class_counts, cfg.beta)


def posthoc_logit_adjust(
    logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor, tau: float
) -> torch.Tensor:
    """z − τ log π at test time: removes the training prior from a CE-trained model."""
    counts = _counts_tensor(class_counts)
    require_positive_counts(counts, "Post-hoc logit adjustment")
    log_prior = torch.log(counts / counts.sum()).to(logits.device, logits.dtype)
    return logits - tau * log_prior


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_c / |w_c|^τ (Kang et al.): τ = 1 gives unit-norm class vectors, τ = 0 leaves them."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms**tau
