"""Balanced Softmax (Ren et al., NeurIPS 2020): CE under the long-tailed prior, z + log n."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.losses import Counts, CountsLoss, LossMethod, soft_cross_entropy


class BalancedSoftmax(CountsLoss):
    """CE(z + log n): train under the long-tailed prior, predict with plain z."""

    needs_positive_counts = "Balanced Softmax"
    soft_targets = True

    def __init__(self, class_counts: Counts) -> None:
        super().__init__(class_counts)
        self.register_buffer("log_counts", self.class_counts.double().log().float())

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        return soft_cross_entropy(z + self.log_counts, target, weight)


class BalancedSoftmaxConfig(LossSection):
    name: Literal["bs"] = "bs"


class BalancedSoftmaxMethod(LossMethod):
    name, label, config = "bs", "BalancedSoftmax", BalancedSoftmaxConfig
    loss_class = BalancedSoftmax


METHOD = BalancedSoftmaxMethod()
