"""BalPoE's logit-adjusted experts (Sanchez Aimar et al., "Balanced Product of Calibrated
Experts for Long-Tailed Recognition", CVPR 2023).

Expert k is trained with logit adjustment of strength λ_k (the train prior π = n / Σ n):

    L = (1 / K) Σ_k CE(z_k + λ_k log(π + 1e-9), y)

and the experts are combined at test time by the mean of their logits (the model's output),
a product of experts whose bias is the mean λ̄: with λ̄ = 1 the product targets the balanced
distribution (the paper's result; the default λ = 0, 1, 2). The paper calibrates the experts
with mixup: the presets set `mixing.mixup_alpha` (the loss takes mixup's soft targets).

Read in emasa/BalPoE-CalibratedLT: model/loss.py (`BSExpertLoss`: the mean over experts of CE
on logits + τ_k log(prior + eps)), configs/mixup/standard_training/*.json (tau_list
[0, 1, 2] on CIFAR, [0, 1.25, 2.5] on ImageNet-LT, mixup alpha 0.4 / 0.8 / 0.3), test.py (the
plain model output, no test-time adjustment) and utils/combiner.py (mixup: one λ ~ Beta(α, α)
per batch, a random pairing, the loss mixed as λ L(y_a) + (1 - λ) L(y_b), which soft targets
give exactly).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.experts import ExpertLoss, ExpertLossMethod
from lwrcli.methods.losses import Counts, soft_cross_entropy

EPS = 1e-9  # the authors' log(prior + eps), eps = 1e-9


def balpoe_loss(
    experts: Tensor, target: Tensor, prior: Tensor, taus: Tensor, weight: Tensor | None
) -> Tensor:
    """experts (N, K, C), target (N,) ids or (N, C) probabilities, prior (C,), taus (K,) ->
    the mean over experts of CE(z_k + λ_k log(π + eps))."""
    log_prior = (prior + EPS).log().to(experts.dtype)
    k = experts.shape[1]
    total = experts.new_zeros(())
    for i in range(k):
        total = total + soft_cross_entropy(experts[:, i] + taus[i] * log_prior, target, weight)
    return total / k


class BalPoELoss(ExpertLoss):
    """BalPoE on K experts' logits (lwrcli.methods.balpoe)."""

    soft_targets = True

    def __init__(self, class_counts: Counts, taus: list[float]) -> None:
        super().__init__(class_counts)
        counts = self.class_counts.double()
        self.register_buffer("prior", (counts / counts.sum()).float())
        self.taus = [float(t) for t in taus]

    def expert_loss(
        self, z: Tensor, experts: Tensor, target: Tensor, weight: Tensor | None
    ) -> Tensor:
        if experts.shape[1] != len(self.taus):
            raise ValueError(f"BalPoE has {len(self.taus)} λ for {experts.shape[1]} experts")
        taus = experts.new_tensor(self.taus)
        return balpoe_loss(experts, target, self.prior, taus, weight)


class BalPoEConfig(LossSection):
    """One logit-adjustment strength λ per expert; their mean is the product's bias."""

    name: Literal["balpoe"] = "balpoe"
    taus: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0])

    @field_validator("taus")
    @classmethod
    def _in_range(cls, taus: list[float]) -> list[float]:
        if len(taus) < 2 or not all(-10.0 <= t <= 10.0 for t in taus):
            raise ValueError("loss.taus needs one λ in [-10, 10] per expert (2 experts or more)")
        return taus


class BalPoEMethod(ExpertLossMethod):
    name, label, config, loss_class = "balpoe", "BalPoE", BalPoEConfig, BalPoELoss

    def describe(self, section: Any) -> str:
        return "BalPoE (λ=" + ",".join(f"{t:g}" for t in section.taus) + ")"

    def make(self, section: Any, class_counts: Tensor) -> BalPoELoss:
        return BalPoELoss(class_counts, section.taus)

    def required_experts(self, section: Any) -> int | None:
        return len(section.taus)

    def lambda_factor(self, cfg: Any) -> float:
        """The experts' losses are averaged: each head's task gradient is 1/K of a single
        model's, so LWR's λ is 1/K (against the variant's K: λ(C) per head)."""
        return 1.0 / len(cfg.loss.taus)


METHOD = BalPoEMethod()
