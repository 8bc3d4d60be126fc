"""Logit-adjusted loss (Menon et al., ICLR 2021): CE(z + τ log π)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.losses import Counts, CountsLoss, LossMethod, soft_cross_entropy


class LogitAdjustment(CountsLoss):
    """CE(z + τ log π), π = n / Σ n; τ = 1 equals Balanced Softmax, τ = 0 CE."""

    needs_positive_counts = "Logit adjustment"
    soft_targets = True

    def __init__(self, class_counts: Counts, tau: float) -> None:
        super().__init__(class_counts)
        self.tau = float(tau)
        counts = self.class_counts.double()
        self.register_buffer("log_prior", (counts / counts.sum()).log().float())

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        return soft_cross_entropy(z + self.tau * self.log_prior, target, weight)


class LogitAdjustmentConfig(LossSection):
    name: Literal["la"] = "la"
    tau: float = Field(1.0, ge=0.0, le=10.0, description="τ; 1 is Balanced Softmax")


class LogitAdjustmentMethod(LossMethod):
    name, label, config, loss_class = "la", "LA", LogitAdjustmentConfig, LogitAdjustment

    def describe(self, section: Any) -> str:
        return f"LA (τ={section.tau:g})"

    def make(self, section: Any, class_counts: Tensor) -> CountsLoss:
        return LogitAdjustment(class_counts, section.tau)


METHOD = LogitAdjustmentMethod()
