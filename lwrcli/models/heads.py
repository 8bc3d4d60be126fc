"""Classifier heads and the one accessor that finds a model's head.

Where the head lives differs by family (`fc`, `classifier.2`, `heads.head`, `head` of a CLIP
image tower, ...): the factory records its attribute path as `model.lwr_head`, and
`get_classifier` / `classifier_key` are what LWR, analysis, tau-norm and stage-2 training use.
A cosine classifier (`CosineLinear`) outputs scale * cos(x, w_c); with scale 1 (the default,
LDAM's recipe) the loss applies its own scale. `ETFHead` is a classifier fixed at a simplex
equiangular tight frame (Yang et al., NeurIPS 2022): its rows are a buffer, never trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwrcli.errors import UserError
from lwrcli.runtime.device import no_autocast
from lwrcli.train.checkpoint import unwrap


class CosineLinear(nn.Module):
    """Normalised classifier: logits_c = scale * cos(x, w_c). Weight (C, d), no bias.

    `scale` is a fixed temperature from the config (LIFT's cosine head uses 25; LDAM keeps 1
    and scales in the loss), not a parameter, so checkpoints hold only the weight."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.scale = float(scale)
        # LDAM-DRW's NormedLinear init: uniform, then rows rescaled to unit-ish norm.
        self.weight.data.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()
        return logits * self.scale if self.scale != 1.0 else logits


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
            f"model.etf_classifier: a simplex ETF of {num_classes} classes spans "
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


def make_classifier(
    in_features: int, num_classes: int, cosine: bool, scale: float = 1.0
) -> nn.Module:
    """A (num_classes, in_features) head: CosineLinear or a plain Linear with bias."""
    if cosine:
        return CosineLinear(in_features, num_classes, scale)
    return nn.Linear(in_features, num_classes)


class LWSHead(nn.Module):
    """Learnable weight scaling: logits_c = s_c (w_c . x + b_c), with w and b frozen and only
    s (C,) trained (initialised to 1, so training starts at the stage-1 classifier). Keeps
    the parameter names `weight` and `bias`, so the classifier key and LWR still find w."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.cosine = isinstance(head, CosineLinear)
        self.cos_scale = float(getattr(head, "scale", 1.0)) if self.cosine else 1.0
        self.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        bias = getattr(head, "bias", None)
        self.bias = (
            nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        )
        self.scales = nn.Parameter(torch.ones(self.weight.shape[0], device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            z = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t() * self.cos_scale
        else:
            z = F.linear(x, self.weight, self.bias)
        return z * self.scales


def head_path(model: nn.Module) -> str:
    """Attribute path of the classifier head; 'fc' for models built before lwr_head existed."""
    path = getattr(unwrap(model), "lwr_head", None)
    return path if isinstance(path, str) else "fc"


def get_classifier(model: nn.Module) -> nn.Module:
    """The classifier head (a module whose `weight` is (C, d)): what LWR repels, analysis reads
    and stage-2 training re-learns. The one place that knows where a model keeps its head."""
    return unwrap(model).get_submodule(head_path(model))


def classifier_key(model: nn.Module) -> str:
    """The state-dict key of the classifier weight (C, d) of the unwrapped model."""
    return f"{head_path(model)}.weight"


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at the dotted `path`."""
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def set_head(model: nn.Module, module: nn.Module) -> None:
    """Put `module` where the model keeps its classifier."""
    set_submodule(unwrap(model), head_path(model), module)
