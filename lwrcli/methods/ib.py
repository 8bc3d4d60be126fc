"""Influence-balanced loss (Park et al., "Influence-Balanced Loss for Imbalanced Visual
Classification", ICCV 2021): the formula, the capture of the head's input it needs, and the
loss as a method.

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
not detached: the gradient flows through it too.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lwrcli.config.sections import LossSection
from lwrcli.methods.base import RunParts
from lwrcli.methods.losses import Counts, CountsLoss, LossMethod, as_counts, require_positive_counts
from lwrcli.models.heads import get_classifier


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


class InfluenceBalancedLoss(CountsLoss):
    """CE before `start_epoch`, then the influence-balanced loss (lwrcli.methods.ib) with its
    own per-class weights (inverse frequency, or none and the `weight` of a re-weighting
    schedule). Reads the head's input from the FeatureCapture that build attaches."""

    needs_features = True

    def __init__(
        self,
        class_counts: Counts,
        start_epoch: int,
        alpha: float,
        epsilon: float,
        class_weight: str = "inverse",
    ) -> None:
        if class_weight == "inverse":
            require_positive_counts(
                as_counts(class_counts), "The influence-balanced loss's inverse-frequency weights"
            )
        super().__init__(class_counts)
        self.start_epoch, self.alpha, self.epsilon = int(start_epoch), float(alpha), float(epsilon)
        self.epoch = 0
        inverse = class_weight == "inverse"
        w = inverse_frequency_weights(self.class_counts) if inverse else None
        self.register_buffer("ib_weight", w.float() if w is not None else None)

    def set_position(self, epoch: int, step: int) -> None:
        self.epoch = int(epoch)

    @property
    def active(self) -> bool:
        """Whether the influence-balanced phase has started."""
        return self.epoch >= self.start_epoch

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        # Taken in both phases, so the captured activations never outlive their step.
        features = self.features.take() if self.features is not None else None
        if not self.active:
            return F.cross_entropy(z, target, weight=weight)
        if features is None or features.shape[0] != z.shape[0]:
            raise RuntimeError(
                "the IB loss needs the head's input of this batch: build attaches a "
                "FeatureCapture on the classifier (lwrcli.methods.ib)"
            )
        if self.ib_weight is not None:
            weight = self.ib_weight.to(z.dtype)
        return influence_balanced_loss(z, target, features, self.alpha, self.epsilon, weight)


class IBConfig(LossSection):
    """CE before `start_epoch`, then w_y CE / (|softmax - onehot|_1 |h|_1 + epsilon) times
    alpha, h the head's input."""

    name: Literal["ib"] = "ib"
    start_epoch: int = Field(100, ge=0, description="0-based epoch where IB replaces CE")
    alpha: float = Field(1000.0, gt=0.0, le=1e8)
    epsilon: float = Field(0.001, gt=0.0, le=1.0)
    # Per-class weight of the IB phase: inverse frequency scaled to sum C (the authors'
    # IBReweight), or none (then loss.reweight=drw at start_epoch gives their IB + CB).
    class_weight: Literal["inverse", "none"] = "inverse"


class IBMethod(LossMethod):
    name, label, config, loss_class = "ib", "IB", IBConfig, InfluenceBalancedLoss

    def describe(self, section: Any) -> str:
        return f"IB (α={section.alpha:g} from {section.start_epoch})"

    def make(self, section: Any, class_counts: Tensor) -> CountsLoss:
        return InfluenceBalancedLoss(
            class_counts, section.start_epoch, section.alpha, section.epsilon, section.class_weight
        )

    def check(self, cfg: Any) -> None:
        loss = cfg.loss
        if loss.name != "ib":
            return
        if loss.class_weight != "none" and loss.reweight != "none":
            raise ValueError(
                f"loss.name=ib weights classes itself (loss.class_weight={loss.class_weight}) "
                f"and loss.reweight={loss.reweight} would weight them again: set "
                "loss.class_weight=none to use the re-weighting schedule (IB + CB is "
                "reweight=drw with drw_epoch=start_epoch), or loss.reweight=none"
            )
        if loss.start_epoch >= cfg.epochs:
            raise ValueError(
                f"loss.start_epoch={loss.start_epoch} is not before the run's end "
                f"(epochs={cfg.epochs}): the influence-balanced phase would never start; "
                "lower loss.start_epoch (0-based; the authors' CIFAR recipe: 100 of 200)"
            )

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        """IB reads the head's input h: a forward pre-hook on the head keeps it."""
        parts.loss.features = FeatureCapture(get_classifier(parts.raw_model))


METHOD = IBMethod()
