"""LDAM (Cao et al., NeurIPS 2019): label-distribution-aware margins on cosine logits."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.losses import Counts, CountsLoss, LossMethod


class LDAMLoss(CountsLoss):
    """CE(s · (cos - m_y e_y)).

    The logits must be cosines in [-1, 1] from a normalised classifier (the cosine head, which
    outputs cos, unscaled); the scale `s` lives here. Margins are m_c = max_m · (n_min /
    n_c)^(1/4), so the rarest class gets max_m; only the target logit is lowered.
    """

    needs_positive_counts = "The LDAM loss"

    def __init__(self, class_counts: Counts, max_m: float, s: float) -> None:
        super().__init__(class_counts)
        counts = self.class_counts.double()
        self.register_buffer("margins", (max_m * (counts.min() / counts) ** 0.25).float())
        self.s = float(s)

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        m_y = self.margins.to(z.dtype)[target]
        margin = torch.zeros_like(z).scatter_(1, target[:, None], m_y[:, None])
        return F.cross_entropy(self.s * (z - margin), target, weight=weight)


class LDAMConfig(LossSection):
    name: Literal["ldam"] = "ldam"
    max_m: float = Field(0.5, ge=0.0, le=5.0, description="the rarest class's margin")
    s: float = Field(30.0, gt=0.0, le=100.0, description="logit scale")


class LDAMMethod(LossMethod):
    name, label, config, loss_class = "ldam", "LDAM", LDAMConfig, LDAMLoss

    def make(self, section: Any, class_counts: Tensor) -> CountsLoss:
        return LDAMLoss(class_counts, section.max_m, section.s)

    def check(self, cfg: Any) -> None:
        # LDAM's margins and scale are defined on cosine logits in [-1, 1].
        if cfg.loss.name == "ldam" and not cfg.model.cosine:
            raise ValueError(
                "loss.name=ldam needs model.head.name=cosine (LDAM works on cosine logits)"
            )


METHOD = LDAMMethod()
