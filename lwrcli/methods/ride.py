"""RIDE's expert loss (Wang et al., "Long-tailed Recognition by Routing Diverse
Distribution-Aware Experts", ICLR 2021): LDAM-DRW on every expert plus the diversity term.

For each expert k with logits z_k (N, C) (cosine logits scaled by s, the authors' NormedLinear
times s) and the ensemble's z̄ = mean_k z_k (the model's output):

    L = Σ_k [ β · CE_w(z_k - s m_y e_y, y) + α · T̄² · KL(softmax(z̄ / T) ‖ softmax(z_k / T)) ]

with LDAM's margins m_c = max_m · (n_min / n_c)^(1/4), CE_w the class-weighted mean of DRW
(none before `drw_epoch`), α = `diversity_factor` (-0.2: the KL is maximised, the experts are
pushed apart), β = `base_loss_factor`, and T the diversity temperature: the scalar
`diversity_temperature` before DRW, and once DRW weights the classes the per-class
T_c = T_0 · w_c / max_c' w_c', w_c = C π_c r + 1 - r (r = `reweight_factor`, π the train prior);
T̄ is the mean of T. z̄ is a constant for the gradient (the authors compute its softmax under
no_grad). KL is averaged over the batch (`batchmean`).

Read in frank-xwang/RIDE-LongTailRecognition, model/loss.py (`RIDELoss`) and
configs/config_imbalance_cifar100_ride.json / config_imagenet_lt_resnext50_ride.json (the
defaults here and the presets' values). One difference: with `diversity_factor` 0 the
authors' code applies the expert loss to the ensemble's logits instead of each expert's; here
each expert always keeps its own. RIDE's router (the expert-assignment module) and its
distillation stage are not implemented.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.experts import ExpertLoss, ExpertLossMethod
from lwrcli.methods.losses import Counts


def ldam_margins(counts: Tensor, max_m: float) -> Tensor:
    """m_c = max_m · (n_min / n_c)^(1/4) (C,) float64: the rarest class gets max_m."""
    c = counts.double()
    return max_m * (c.min() / c) ** 0.25


def diversity_temperatures(counts: Tensor, base: float, reweight_factor: float) -> Tensor:
    """RIDE's per-class temperature once DRW is on: T_0 · w_c / max w, w_c = C π_c r + 1 - r."""
    prior = counts.double() / counts.double().sum()
    w = prior.numel() * prior * reweight_factor + 1.0 - reweight_factor
    return base * w / w.max()


def ride_loss(
    experts: Tensor,
    aggregate: Tensor,
    target: Tensor,
    margins: Tensor,
    s: float,
    weight: Tensor | None,
    temperature: Tensor | float,
    diversity_factor: float,
    base_loss_factor: float = 1.0,
) -> Tensor:
    """experts (N, K, C), aggregate (N, C), target (N,) int64, margins (C,), temperature a
    number or (C,) -> the scalar RIDE loss summed over the K experts (module docstring)."""
    t = temperature
    t_mean = float(t.mean()) if isinstance(t, Tensor) else float(t)
    t = t.to(experts.dtype) if isinstance(t, Tensor) else t
    ensemble = F.softmax(aggregate.detach() / t, dim=1)
    shift = s * margins.to(experts.dtype)[target]
    total = experts.new_zeros(())
    for k in range(experts.shape[1]):
        z = experts[:, k]
        lowered = z - torch.zeros_like(z).scatter_(1, target[:, None], shift[:, None])
        total = total + base_loss_factor * F.cross_entropy(lowered, target, weight=weight)
        if diversity_factor != 0.0:
            kl = F.kl_div(F.log_softmax(z / t, dim=1), ensemble, reduction="batchmean")
            total = total + diversity_factor * t_mean * t_mean * kl
    return total


class RIDELoss(ExpertLoss):
    """RIDE on the experts' logits (lwrcli.methods.ride)."""

    needs_positive_counts = "RIDE's LDAM margins"

    def __init__(
        self,
        class_counts: Counts,
        max_m: float,
        s: float,
        diversity_factor: float,
        diversity_temperature: float,
        reweight_factor: float,
        base_loss_factor: float,
    ) -> None:
        super().__init__(class_counts)
        counts = self.class_counts.double()
        self.register_buffer("margins", ldam_margins(counts, max_m).float())
        temps = diversity_temperatures(counts, diversity_temperature, reweight_factor)
        self.register_buffer("temperatures", temps.float())
        self.s, self.diversity_factor = float(s), float(diversity_factor)
        self.diversity_temperature = float(diversity_temperature)
        self.base_loss_factor = float(base_loss_factor)

    def expert_loss(
        self, z: Tensor, experts: Tensor, target: Tensor, weight: Tensor | None
    ) -> Tensor:
        # DRW's class weights switch the per-class temperature on (RIDE switches both at
        # reweight_epoch).
        temperature = self.diversity_temperature if weight is None else self.temperatures
        return ride_loss(
            experts,
            z,
            target,
            self.margins,
            self.s,
            weight,
            temperature,
            self.diversity_factor,
            self.base_loss_factor,
        )


class RIDEConfig(LossSection):
    """LDAM-DRW on each expert plus the KL diversity term (RIDELoss's defaults)."""

    name: Literal["ride"] = "ride"
    max_m: float = Field(0.5, ge=0.0, le=5.0, description="the rarest class's margin")
    s: float = Field(30.0, gt=0.0, le=100.0, description="the cosine logits' scale")
    diversity_factor: float = Field(-0.2, ge=-10.0, le=10.0)
    diversity_temperature: float = Field(1.0, gt=0.0, le=100.0)
    reweight_factor: float = Field(0.05, ge=0.0, lt=1.0)
    base_loss_factor: float = Field(1.0, gt=0.0, le=100.0)


class RIDEMethod(ExpertLossMethod):
    name, label, config, loss_class = "ride", "RIDE", RIDEConfig, RIDELoss

    def describe(self, section: Any) -> str:
        return f"RIDE (div {section.diversity_factor:g})"

    def make(self, section: Any, class_counts: Tensor) -> RIDELoss:
        return RIDELoss(
            class_counts,
            section.max_m,
            section.s,
            section.diversity_factor,
            section.diversity_temperature,
            section.reweight_factor,
            section.base_loss_factor,
        )

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        loss, head = cfg.loss, cfg.model.head
        if loss.name != "ride":
            return
        if head.name != "cosine" or float(head.scale) != float(loss.s):
            raise ValueError(
                f"loss.name=ride subtracts LDAM's margin at the logits' scale s={loss.s:g}: the "
                "experts need cosine heads that scale by it (the authors' NormedLinear x s): "
                f"set model.head.name=cosine and model.head.scale={loss.s:g}"
            )


METHOD = RIDEMethod()
