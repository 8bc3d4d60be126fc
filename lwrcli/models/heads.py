"""Classifier heads and the one accessor that finds a model's head.

Where the head lives differs by family (`fc`, `classifier.2`, `heads.head`, `head` of a CLIP
image tower, ...): the factory records its attribute path as `model.lwr_head`, and
`get_classifier` / `classifier_key` are what LWR, analysis, tau-norm and stage-2 training use.
A model with several classifiers (K experts over a shared trunk, lwrcli.models.experts) also
records every head's path as `model.lwr_heads` (the first is `lwr_head`); `get_classifiers` /
`classifier_keys` return all of them, one entry for every other model.
A cosine classifier (`CosineLinear`) outputs scale * cos(x, w_c); with scale 1 (the default,
LDAM's recipe) the loss applies its own scale. A fixed head (lwrcli.methods.etf) is built by
its method and put in place with `set_head`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.runtime.modules import unwrap


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


def head_paths(model: nn.Module) -> list[str]:
    """Attribute paths of every classifier head: `model.lwr_heads` where a model has several
    (the first is `lwr_head`), else the one `head_path`."""
    paths = getattr(unwrap(model), "lwr_heads", None)
    if isinstance(paths, (list, tuple)) and paths and all(isinstance(p, str) for p in paths):
        return list(paths)
    return [head_path(model)]


def get_classifiers(model: nn.Module) -> list[nn.Module]:
    """Every classifier head (each with a (C, d) `weight`): one for a plain model, K for K
    experts. What LWR repels (all of them), the epoch geometry and per-expert evaluation read."""
    raw = unwrap(model)
    return [raw.get_submodule(p) for p in head_paths(model)]


def classifier_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of every classifier weight (C, d), first `classifier_key`."""
    return [f"{p}.weight" for p in head_paths(model)]


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at the dotted `path`."""
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def set_head(model: nn.Module, module: nn.Module) -> None:
    """Put `module` where the model keeps its classifier."""
    set_submodule(unwrap(model), head_path(model), module)
