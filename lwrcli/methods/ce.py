"""Softmax cross-entropy: the baseline every long-tailed method is measured against."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.losses import CountsLoss, LossMethod, soft_cross_entropy


class CrossEntropy(CountsLoss):
    """Plain softmax cross-entropy (the counts are only kept for a uniform interface)."""

    soft_targets = True

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        return soft_cross_entropy(z, target, weight)


class CEConfig(LossSection):
    name: Literal["ce"] = "ce"


class CEMethod(LossMethod):
    name, label, config, loss_class = "ce", "CE", CEConfig, CrossEntropy


METHOD = CEMethod()
