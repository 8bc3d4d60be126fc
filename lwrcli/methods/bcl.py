"""BCL (Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR
2022) as a loss: `loss.name: bcl`.

Read from the authors' code (FlamieZhu/Balanced-Contrastive-Learning: loss/contrastive.py
`BalSCL`, loss/logitadjust.py, models/resnext.py `BCLModel`, main.py), written here from the
equations, not copied. Two branches share the network:

- classification: logit-adjusted cross-entropy CE(z + τ log π, y) on the first view's logits
  (the authors' LogitAdjust, τ = 1), with a cosine classifier (their NormedLinear, scale 30);
- balanced supervised contrastive learning on the embeddings z = normalize(g(h)) of two more
  views (g: the projection MLP), together with the class prototypes c_k = normalize(g'(w_k)),
  an MLP g' of the classifier rows w_k (their `head_fc`).

For the 2B anchors of the batch's two contrastive views (view-major), the contrast set is the
2B embeddings plus the C prototypes (class complement: every class appears in every batch).
With n_k the count of class k in that set and i's own class counted without i:

    L_i = - 1 / |P(i)| Σ_{p ∈ P(i)} log( exp(z_i·z_p/τ) /
              Σ_k 1 / (n_k - [k = y_i]) Σ_{j of class k, j ≠ i} exp(z_i·z_j/τ) )

P(i): the other members of i's class in the set (its other view, batch mates, its prototype).
Dividing each class's sum by its count is class averaging: a class weighs the same in the
denominator however many images of it the batch holds. L_BCL is the mean over anchors, and

    L = α CE_LA + β L_BCL        (α = 1, β = 0.35, τ = 0.07: main.py's defaults)

The authors draw three views per image: one for the classifier and two for the contrast
(`views: 3`, one forward over all three); `views: 2` uses the first view for both.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lwrcli.methods.contrastive import ContrastiveLoss, ContrastiveMethod, ContrastiveSection


def bcl_loss(features: Tensor, labels: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """The balanced contrastive term (module docstring): unit embeddings (N, V, p) of V views,
    labels (N,), unit prototypes (C, p) -> mean over the V·N anchors."""
    n, v, p = features.shape
    c = prototypes.shape[0]
    anchors = features.transpose(0, 1).reshape(v * n, p)
    anchor_labels = labels.repeat(v)
    contrast = torch.cat([anchors, prototypes])
    contrast_labels = torch.cat([anchor_labels, torch.arange(c, device=labels.device)])
    counts = torch.bincount(contrast_labels, minlength=c).to(anchors.dtype)
    logits = anchors @ contrast.t() / temperature  # (VN, VN + C)
    rows = torch.arange(v * n, device=labels.device)
    itself = torch.zeros_like(logits, dtype=torch.bool)
    itself[rows, rows] = True
    positive = (anchor_labels[:, None] == contrast_labels[None, :]) & ~itself
    # Class averaging: each term divided by its class's count (the anchor's own class
    # without the anchor).
    members = counts[contrast_labels][None, :] - positive.to(logits.dtype)
    averaged = (logits - members.log()).masked_fill(itself, float("-inf"))
    log_prob = logits - torch.logsumexp(averaged, dim=1, keepdim=True)
    pos = positive.to(logits.dtype)
    return -((pos * log_prob).sum(1) / pos.sum(1)).mean()


class BCLLossModule(ContrastiveLoss):
    """α CE(z + τ log π) on the classification view + β L_BCL on the contrastive views."""

    needs_positive_counts = "BCL's logit-adjusted cross-entropy (log of the class prior)"

    def __init__(self, class_counts: Any, section: Any) -> None:
        super().__init__(class_counts)
        self.ce_weight, self.contrast_weight = section.ce_weight, section.contrast_weight
        self.temperature = section.temperature
        counts = self.class_counts.double()
        self.register_buffer("log_prior", (section.tau * (counts / counts.sum()).log()).float())

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        out = self.outputs()
        logits, emb = out.logits.float(), out.embeddings.float()
        assert out.prototypes is not None, "BCL's network has a prototype head"
        ce = F.cross_entropy(logits[:, 0] + self.log_prior, target)
        views = emb[:, -2:]  # the two contrastive views (views 1, 2; or 0, 1 with two views)
        contrast = bcl_loss(views, target, out.prototypes.float(), self.temperature)
        return self.ce_weight * ce + self.contrast_weight * contrast


class BCLConfig(ContrastiveSection):
    """BCL: temperature τ of the contrastive term, its weight β, the CE weight α, τ of the
    logit adjustment, and 3 views (authors) or 2. Defaults: the authors' main.py
    (ImageNet-LT / iNaturalist)."""

    name: Literal["bcl"] = "bcl"
    temperature: float = Field(0.07, gt=0.0, le=10.0, description="of the contrastive term")
    ce_weight: float = Field(1.0, ge=0.0, le=100.0, description="α, logit-adjusted CE")
    contrast_weight: float = Field(0.35, ge=0.0, le=100.0, description="β, balanced SCL")
    tau: float = Field(1.0, ge=0.0, le=10.0, description="logit adjustment τ")
    dim: int = Field(1024, ge=2, le=8192, description="projection output size")
    views: Literal[2, 3] = 3


class BCLMethod(ContrastiveMethod):
    name, label, config, loss_class = "bcl", "BCL", BCLConfig, BCLLossModule
    prototypes = True
    joint = True  # one forward over every view, as the authors' torch.cat of the three

    def describe(self, section: Any) -> str:
        return f"BCL (β={section.contrast_weight:g}, τ={section.temperature:g})"

    def make(self, section: Any, class_counts: Tensor) -> BCLLossModule:
        return BCLLossModule(class_counts, section)

    def views(self, section: Any) -> int:
        return int(section.views)


METHOD = BCLMethod()
