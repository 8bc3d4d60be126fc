"""Influence-balanced loss (Park et al., "Influence-Balanced Loss for Imbalanced Visual
Classification", ICCV 2021): the formula and the capture of the head's input it needs.

A sample's influence on the decision boundary is approximated by |∇_W CE|_1 of the linear
head, which factorises as |softmax(z) - e_y|_1 · |h|_1 with h the head's input (the
penultimate features). The loss divides each sample's CE by it, so samples that would move the
boundary most (typically the majority classes' hard ones, late in training) count least:

    IB = mean_i  w_{y_i} CE_i · α / (|softmax(z_i) - e_{y_i}|_1 · |h_i|_1 + ε)

This is the authors' code (github.com/pseulki/IB-Loss, losses.py, `IBLoss.forward`):

    grads = torch.sum(torch.abs(F.softmax(input, dim=1) - F.one_hot(target, num_classes)),1)
    ib = grads*features.reshape(-1)
    ib = self.alpha / (ib + self.epsilon)
    return ib_loss(F.cross_entropy(input, target, reduction='none', weight=self.weight), ib)

with `ib_loss` = `(input_values * ib).mean()` and `features` = `torch.sum(torch.abs(out1), 1)`
of the flattened features before the head (models/resnet_cifar.py). As there, the factor is
not detached: the gradient flows through it too. The lowest room: imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def influence_balanced_loss(
    z: Tensor,
    target: Tensor,
    features: Tensor,
    alpha: float,
    epsilon: float,
    weight: Tensor | None,
) -> Tensor:
    """z (N, C) logits, target (N,) int64, features (N, ...) the head's input, weight (C,) or
    None -> scalar: the plain mean over N of w_y CE · α / (|p - e_y|_1 |h|_1 + ε)."""
    grad_norm = (F.softmax(z, dim=1) - F.one_hot(target, z.shape[1]).to(z.dtype)).abs().sum(1)
    feat_norm = features.flatten(1).to(z.dtype).abs().sum(1)
    factor = alpha / (grad_norm * feat_norm + epsilon)
    ce = F.cross_entropy(z, target, weight=weight, reduction="none")
    return (ce * factor).mean()


def inverse_frequency_weights(counts: Tensor) -> Tensor:
    """The authors' IBReweight: w_c = (1 / n_c) / Σ_k (1 / n_k) · C, (C,) float64."""
    inv = 1.0 / counts.double()
    return inv / inv.sum() * counts.numel()


class FeatureCapture:
    """Keeps the input of the classifier head from the last training forward: h (N, d).

    A forward pre-hook on the head module itself, so it sees the features whatever wraps the
    model (DDP, the compile fallback) and whatever the model family is. It keeps them only in
    training mode with gradients on: evaluation (`model.eval()`, `torch.no_grad`) leaves
    nothing behind. `take()` hands the tensor over and forgets it, so no activation or graph
    outlives the step that made it.
    """

    def __init__(self, head: nn.Module) -> None:
        self.features: Tensor | None = None
        self.handle: RemovableHandle = head.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[object, ...]) -> None:
        if module.training and torch.is_grad_enabled() and isinstance(args[0], Tensor):
            self.features = args[0]

    def take(self) -> Tensor | None:
        """The last training features (N, d), or None; either way nothing is kept."""
        features, self.features = self.features, None
        return features

    def remove(self) -> None:
        self.handle.remove()
        self.features = None
