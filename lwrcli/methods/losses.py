"""What every task loss shares: the base class, soft-target cross-entropy, CB/DRW weights,
and `build_loss`, which builds the loss the config names through the method registry (each
loss is a module of its own in lwrcli.methods: ce, focal, ldam, balanced_softmax, ...).

Every loss is a small module holding the training `class_counts` (C,) as a buffer. All share
one interface:
`loss(logits (N, C), target, weight (C,) | None) -> scalar`, where `target` is (N,) int64 class
ids or, for losses with `soft_targets = True`, (N, C) float class probabilities (mixup, CutMix,
label smoothing, BBN's mixed targets), and `weight` is an optional per-class weight applied like
`F.cross_entropy(weight=...)`: a weighted mean, Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i} (Focal keeps
LDAM-DRW's plain mean, see there). With soft targets the weighted mean is
Σ_i Σ_c w_c q_ic ℓ_ic / Σ_i Σ_c w_c q_ic, so one-hot targets give exactly the hard-label loss.
Re-weighting is a schedule outside the loss (`reweight_for_epoch`), so DRW combines with any
loss. Losses run in float32 at least (bf16/fp16 logits are upcast, autocast is off inside):
log-sum-exp in bf16 loses the small margins (log n, LDAM's m_c) that these losses are about.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwrcli.config.sections import LossSection
from lwrcli.config.slots import methods_of, slot_method
from lwrcli.errors import UserError
from lwrcli.methods.base import Method
from lwrcli.runtime.device import no_autocast

Counts = Sequence[int] | Tensor


def as_counts(class_counts: Counts) -> Tensor:
    """Training images per class as a float64 vector (C,), checked."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64).detach().cpu().clone()
    if counts.dim() != 1 or counts.numel() == 0:
        raise UserError(
            f"Class counts must be a non-empty list with one number per class, "
            f"got shape {tuple(counts.shape)}."
        )
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise UserError("Class counts must be finite and non-negative.")
    return counts


def require_positive_counts(counts: Tensor, what: str) -> None:
    """log n and 1/n are undefined for an empty class: name the classes instead of a NaN later."""
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise UserError(
            f"{what} needs at least one training image per class, but {len(empty)} of "
            f"{counts.numel()} classes have none (class ids {shown}). Use a split where every "
            "class has training images, or a loss and re-weighting that do not depend on class "
            "frequencies (loss.name=ce or focal with loss.reweight=none)."
        )


class CountsLoss(nn.Module, ABC):
    """Base: stores counts, upcasts logits to float32, checks shapes; subclasses define `loss`."""

    # Name used in the error when a class has no images; None: the loss does not need n > 0.
    needs_positive_counts: str | None = None
    # Whether `loss` accepts (N, C) probability targets as well as (N,) class ids. Losses whose
    # definition needs one true class per sample (a margin on it, its p_t) leave this False.
    soft_targets: bool = False
    # Whether the loss reads the head's input h: build attaches a FeatureCapture (`features`).
    needs_features: bool = False
    # Whether the loss reads what the model kept of the step besides the logits (augmented
    # views' embeddings, every expert's logits): it cannot be called on bare logits, and its
    # formula is tested on those outputs by its own tests.
    needs_model_outputs: bool = False

    def __init__(self, class_counts: Counts) -> None:
        super().__init__()
        counts = as_counts(class_counts)
        if self.needs_positive_counts is not None:
            require_positive_counts(counts, self.needs_positive_counts)
        self.register_buffer("class_counts", counts.float())
        self.num_classes = counts.numel()
        self.features: Any = None  # a FeatureCapture of the head's input (lwrcli.methods.ib)
        # The run's seed, for losses that draw random numbers (build_loss sets it).
        self.seed = 0

    def set_position(self, epoch: int, step: int) -> None:
        """Where training stands before each optimizer step: 0-based epoch and step within it.
        Losses that change over training (IB's switch, SEQL's draws) read it; others ignore it."""

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """logits (N, C), target (N,) int64 or (N, C) probabilities, weight (C,) or None ->
        scalar (float32 at least)."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise UserError(
                f"The model outputs logits of shape {tuple(logits.shape)}, but the loss was built "
                f"for {self.num_classes} classes (the dataset's class counts). Use a model and "
                "dataset with the same number of classes."
            )
        if weight is not None and weight.shape != (self.num_classes,):
            raise ValueError(f"class weight must have shape ({self.num_classes},)")
        if target.dim() == 2 and not self.soft_targets:
            raise UserError(
                f"The {type(self).__name__} loss needs one class per sample, but this batch has "
                "soft targets (mixup, CutMix, label smoothing or BBN). Use a loss that takes "
                f"soft targets ({', '.join(soft_target_losses())}) or turn the mixing off."
            )
        with no_autocast(logits.device):
            z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
            w = None if weight is None else weight.to(device=z.device, dtype=z.dtype)
            if target.dim() == 2:
                target = target.to(device=z.device, dtype=z.dtype)
            return self.loss(z, target, w)

    @abstractmethod
    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        """float32 logits z (N, C), target (N,), weight (C,) or None -> scalar."""


def soft_cross_entropy(z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """F.cross_entropy for (N,) ids or (N, C) probabilities; soft and weighted, the mean is
    Σ_i Σ_c w_c q_ic (-log p_ic) / Σ_i Σ_c w_c q_ic, which one-hot targets make the hard one."""
    if target.dim() == 1:
        return F.cross_entropy(z, target, weight=weight)
    nll = -F.log_softmax(z, dim=1)
    if weight is None:
        return (target * nll).sum(1).mean()
    wq = target * weight
    return (wq * nll).sum() / wq.sum()


def soft_target_losses() -> list[str]:
    """Config names of the losses that accept (N, C) probability targets."""
    return [name for name, m in methods_of("loss").items() if m.soft_targets]


def build_loss(cfg: LossSection, class_counts: Counts, seed: int = 0) -> CountsLoss:
    """The task loss named by `cfg.name`, with its hyperparameters from `cfg` and the run's
    `seed` (for losses that draw random numbers).

    Re-weighting needs every class to have images; that is checked here, at build time, rather
    than at the DRW epoch deep into training.
    """
    counts = as_counts(class_counts)
    if cfg.reweight != "none":
        require_positive_counts(
            counts, f"Class-balanced re-weighting (loss.reweight={cfg.reweight})"
        )
    loss = slot_method("loss", cfg.name).build_loss(cfg, counts, int(seed))
    loss.seed = int(seed)
    return loss


def class_balanced_weights(class_counts: Counts, beta: float) -> Tensor:
    """Effective-number weights w_c = (1 - β) / (1 - β^n_c) (Cui et al.), summing to C. (C,) f64."""
    counts = as_counts(class_counts)
    require_positive_counts(counts, "Class-balanced re-weighting")
    effective = -torch.expm1(counts * torch.log(torch.tensor(beta, dtype=torch.float64)))
    w = (1.0 - beta) / effective
    return w * (counts.numel() / w.sum())


def reweight_for_epoch(cfg: LossSection, class_counts: Counts, epoch: int) -> Tensor | None:
    """Per-class weights (C,) at 0-based `epoch`: none: never; cb: always; drw: from drw_epoch."""
    if cfg.reweight == "none" or (cfg.reweight == "drw" and epoch < cfg.drw_epoch):
        return None
    return class_balanced_weights(class_counts, cfg.beta)


def posthoc_logit_adjust(logits: Tensor, class_counts: Counts, tau: float) -> Tensor:
    """z - τ log π at test time (N, C): removes the training prior from a model trained with CE."""
    counts = as_counts(class_counts)
    require_positive_counts(counts, "Post-hoc logit adjustment")
    log_prior = (counts / counts.sum()).log()
    return logits - (tau * log_prior).to(device=logits.device, dtype=logits.dtype)


def tau_normalize(weight: Tensor, tau: float) -> Tensor:
    """w_c / |w_c|^τ (Kang et al.), weight (C, d): τ = 1 gives unit rows, τ = 0 leaves them."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


class LossMethod(Method):
    """A loss as a registered method: its config section and the `CountsLoss` it builds
    (`make` passes the section's settings to the loss's constructor)."""

    slot = "loss"
    loss_class: type[CountsLoss]

    @property
    def soft_targets(self) -> bool:  # type: ignore[override]
        return self.loss_class.soft_targets

    def make(self, section: Any, class_counts: Tensor) -> CountsLoss:
        return self.loss_class(class_counts)

    def build_loss(self, section: Any, class_counts: Tensor, seed: int) -> CountsLoss:
        return self.make(section, class_counts)
