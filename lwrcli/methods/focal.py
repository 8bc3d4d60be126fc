"""Focal loss (Lin et al., ICCV 2017): (1 - p_t)^γ · CE_t, so easy samples count less."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.losses import Counts, CountsLoss, LossMethod


class FocalLoss(CountsLoss):
    """(1 - p_t)^γ · CE_t per sample; γ = 0 is CE.

    With a class weight the sample term is w_{y} (1 - p_t)^γ CE_t and the batch reduction is a
    plain mean over N, as in the LDAM-DRW code (not F.cross_entropy's weighted mean). Unlike that
    code, p_t is the model's probability, not exp(-weighted CE), which is no probability.
    """

    def __init__(self, class_counts: Counts, gamma: float) -> None:
        super().__init__(class_counts)
        self.gamma = float(gamma)

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        log_pt = F.log_softmax(z, dim=1).gather(1, target[:, None]).squeeze(1)
        # 1 - p_t = -expm1(log p_t) keeps full precision as p_t -> 1. The floor at the smallest
        # normal number keeps γ (1 - p_t)^(γ-1) in the gradient finite when p_t rounds to 1
        # (there the clamp passes no gradient and the term is 0 anyway).
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(z.dtype).tiny)
        per_sample = one_minus_pt.pow(self.gamma) * -log_pt
        if weight is not None:
            per_sample = per_sample * weight[target]
        return per_sample.mean()


class FocalConfig(LossSection):
    name: Literal["focal"] = "focal"
    gamma: float = Field(1.0, ge=0.0, le=10.0, description="γ; 0 is CE")


class FocalMethod(LossMethod):
    name, label, config, loss_class = "focal", "Focal", FocalConfig, FocalLoss

    def describe(self, section: Any) -> str:
        return f"Focal (γ={section.gamma:g})"

    def make(self, section: Any, class_counts: Tensor) -> CountsLoss:
        return FocalLoss(class_counts, section.gamma)


METHOD = FocalMethod()
