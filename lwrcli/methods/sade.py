"""SADE's skill-diverse expert loss (Zhang et al., "Self-Supervised Aggregation of Diverse
Experts for Test-Agnostic Long-Tailed Recognition", NeurIPS 2022; first released as TADE).

Three experts learn three class distributions from the same long-tailed data, with the
training prior π = n / Σ n and its inverse π̃ (the prior's values in reversed order: the class
with the most images gets the smallest prior value):

    L = CE(z_1, y)                                  forward (head) expert: plain softmax
      + CE(z_2 + log π, y)                          uniform expert: Balanced Softmax
      + CE(z_3 + log π - τ log π̃, y)                backward (tail) expert: inverse prior

τ = 2 in the paper and the authors' configs. Logarithms take π + 1e-9 as the authors'. The
three terms are summed. At test time the experts are aggregated uniformly (the mean of their
logits, the model's output), or by test-time self-supervised aggregation
(`lwr eval --aggregate tsa`, lwrcli.use.aggregate).

Read in Vanint/SADE-AgnosticLT: configs/config_cifar100_ir100_sade.json and
config_imagenet_lt_resnext50_sade.json (`DiverseExpertLoss` with tau 2, the recipes);
the loss file itself (model/loss.py) is not in the stored copy here; the equations follow the
paper and BalPoE's copy of it (emasa/BalPoE-CalibratedLT model/loss.py, `TADELoss`, whose
`reverse_prior` gives π̃). Ties in π (classes with equal counts) are ordered by class id in
π̃ (a stable sort; the authors' torch.sort does not fix their order).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.experts import ExpertLoss, ExpertLossMethod
from lwrcli.methods.losses import Counts, soft_cross_entropy

EPS = 1e-9  # the authors' log(prior + 1e-9)


def inverse_prior(prior: Tensor) -> Tensor:
    """π̃ (C,): the prior's values in reversed order of rank (largest <-> smallest)."""
    values, order = torch.sort(prior, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return values[prior.numel() - 1 - rank]


def sade_loss(
    experts: Tensor, target: Tensor, prior: Tensor, tau: float, weight: Tensor | None
) -> Tensor:
    """experts (N, 3, C), target (N,) ids or (N, C) probabilities, prior π (C,) -> the sum of
    the three experts' losses (module docstring)."""
    log_prior = (prior + EPS).log().to(experts.dtype)
    log_inverse = (inverse_prior(prior) + EPS).log().to(experts.dtype)
    head = soft_cross_entropy(experts[:, 0], target, weight)
    balanced = soft_cross_entropy(experts[:, 1] + log_prior, target, weight)
    tail = soft_cross_entropy(experts[:, 2] + log_prior - tau * log_inverse, target, weight)
    return head + balanced + tail


class SADELoss(ExpertLoss):
    """SADE on three experts' logits (lwrcli.methods.sade)."""

    soft_targets = True

    def __init__(self, class_counts: Counts, tau: float) -> None:
        super().__init__(class_counts)
        counts = self.class_counts.double()
        self.register_buffer("prior", (counts / counts.sum()).float())
        self.tau = float(tau)

    def expert_loss(
        self, z: Tensor, experts: Tensor, target: Tensor, weight: Tensor | None
    ) -> Tensor:
        return sade_loss(experts, target, self.prior, self.tau, weight)


class SADEConfig(LossSection):
    """Softmax, Balanced Softmax and inverse-prior (τ) experts, summed."""

    name: Literal["sade"] = "sade"
    tau: float = Field(2.0, ge=0.0, le=10.0, description="the inverse prior's power")


class SADEMethod(ExpertLossMethod):
    name, label, config, loss_class = "sade", "SADE", SADEConfig, SADELoss

    def describe(self, section: Any) -> str:
        return f"SADE (τ={section.tau:g})"

    def make(self, section: Any, class_counts: Tensor) -> SADELoss:
        return SADELoss(class_counts, section.tau)

    def required_experts(self, section: Any) -> int | None:
        return 3


METHOD = SADEMethod()
