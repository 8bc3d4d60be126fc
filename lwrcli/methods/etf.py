"""A classifier fixed at a simplex equiangular tight frame (Yang et al., "Inducing Neural
Collapse in Imbalanced Learning", NeurIPS 2022): `model.head: {name: etf}`.

Its rows are a buffer, never trained; logits are cosines of BatchNorm'd, normalised features
with its rows, which the dot-regression loss (`loss.name: dr`, lwrcli.methods.dot_regression)
expects. The head already sits at the geometry LWR pushes toward, so the rules below refuse
what would act on its rows (LWR, re-learning the classifier in stage 2).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwrcli.config.sections import HeadSection
from lwrcli.errors import UserError
from lwrcli.methods.base import Method
from lwrcli.runtime.device import no_autocast


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """(C, d) float64 rows of a simplex ETF: unit norm, every pairwise cosine -1/(C-1).

    W = sqrt(C/(C-1)) U P^T, with U (C, C-1) an orthonormal basis of the vectors orthogonal to
    the all-ones vector (so U U^T = I - 11^T/C) and P (d, C-1) a random orthonormal frame from
    the QR decomposition of a Gaussian matrix (sign-fixed, so Haar distributed). Then
    W W^T = C/(C-1) (I - 11^T/C): diagonal 1, off-diagonal -1/(C-1). Needs d >= C - 1 (the
    authors' construction, P (d, C), needs d >= C; the simplex spans only C - 1 dimensions).
    """
    if num_classes < 2:
        raise ValueError("a simplex ETF needs at least 2 classes")
    if dim < num_classes - 1:
        raise UserError(
            f"model.head.name=etf: a simplex ETF of {num_classes} classes spans "
            f"{num_classes - 1} dimensions, but the model's features have {dim}. Use a model "
            f"with at least {num_classes - 1} feature dimensions (for resnet32, "
            f"model.resnet_width={-(-(num_classes - 1) // 4)} or more gives 4x that), or turn "
            "the ETF head off."
        )
    c = num_classes
    centering = torch.eye(c, dtype=torch.float64) - 1.0 / c
    u, _ = torch.linalg.qr(centering[:, : c - 1])  # (C, C-1), columns orthogonal to 1
    g = torch.randn(dim, c - 1, dtype=torch.float64, generator=generator)
    p, r = torch.linalg.qr(g)  # (d, C-1) orthonormal columns
    signs = torch.diagonal(r).sign()
    p = p * torch.where(signs == 0, torch.ones_like(signs), signs)
    return (c / (c - 1)) ** 0.5 * u @ p.t()


class ETFHead(nn.Module):
    """A classifier fixed at a simplex ETF: logits_c = w_c . h, with h the feature after a
    BatchNorm1d (learned, as in the authors' ETF_Classifier) and L2 normalisation, and w_c
    the ETF's unit rows. Logits are cosines in [-1, 1], what the dot-regression loss (`dr`)
    expects. `weight` (C, d) is a buffer: in every checkpoint, in no optimizer, never changed.
    `feature_bn` False leaves out the BatchNorm (plain normalised features)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        feature_bn: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        rows = simplex_etf(num_classes, in_features, generator).float()
        self.register_buffer("weight", rows)
        self.bn = nn.BatchNorm1d(in_features) if feature_bn else nn.Identity()
        self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        # float32 even inside a bf16 step: dot regression is (cos - 1)^2, and a bf16 cosine
        # near 1 is only resolved to 2^-8.
        with no_autocast(x.device):
            h = x.float()
            if self.training and h.shape[0] == 1 and isinstance(self.bn, nn.BatchNorm1d):
                # A last batch of one image has no batch statistics: use the running ones
                # (and leave them unchanged) instead of failing.
                bn = self.bn
                h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
            else:
                h = self.bn(h)
            return F.normalize(h, dim=1, eps=1e-8) @ self.weight.t()


class ETFConfig(HeadSection):
    name: Literal["etf"] = "etf"
    # The head's BatchNorm1d on the features before normalising (the authors' head).
    feature_bn: bool = True


class ETFMethod(Method):
    name, slot, label, config = "etf", "head", "fixed ETF head", ETFConfig

    def build_head(self, section: Any, in_features: int, num_classes: int) -> nn.Module:
        return ETFHead(in_features, num_classes, section.feature_bn)

    def check(self, cfg: Any) -> None:
        if cfg.model.head.name != "etf":
            return
        if cfg.model.head_init != "random":
            raise ValueError(
                f"model.head_init={cfg.model.head_init} initialises a learnable head, but the "
                "ETF head is fixed at a random simplex: set model.head_init=random or another "
                "model.head"
            )
        if cfg.lwr.enabled:
            raise ValueError(
                "lwr.enabled=true with model.head.name=etf: LWR repels the classifier's rows, "
                "but the ETF head is fixed (its rows never move) and already sits at the "
                "geometry LWR pushes toward (every pairwise cosine -1/(C-1)). Turn one off: "
                "--set lwr.enabled=false, or another model.head"
            )
        stage2 = cfg.section("stage2").mode
        if stage2 != "none" or cfg.init.reset_classifier:
            raise ValueError(
                f"stage2.mode={stage2} / init.reset_classifier="
                f"{str(cfg.init.reset_classifier).lower()} re-learn the classifier, but the ETF "
                "head is fixed: use another model.head for a stage-2 recipe"
            )


METHOD = ETFMethod()
