"""Long-tailed task losses: CE, Focal, LDAM, Balanced Softmax, Logit Adjustment, IB, SEQL,
Dot Regression (for the fixed ETF head); CB/DRW weights.

Every loss is a small module holding the training `class_counts` (C,) as a buffer, built from
`LossConfig` by `build_loss` over the plain `LOSSES` mapping. All share one interface:
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

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lwrcli.config.schema import LossConfig
from lwrcli.errors import UserError
from lwrcli.methods.equalization import (
    draw_drops,
    equalized_cross_entropy,
    position_seed,
    tail_classes,
)
from lwrcli.methods.influence import (
    FeatureCapture,
    influence_balanced_loss,
    inverse_frequency_weights,
)
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

    def __init__(self, class_counts: Counts) -> None:
        super().__init__()
        counts = as_counts(class_counts)
        if self.needs_positive_counts is not None:
            require_positive_counts(counts, self.needs_positive_counts)
        self.register_buffer("class_counts", counts.float())
        self.num_classes = counts.numel()
        self.features: FeatureCapture | None = None
        # The run's seed, for losses that draw random numbers (build_loss sets it).
        self.seed = 0

    def set_position(self, epoch: int, step: int) -> None:
        """Where training stands before each optimizer step: 0-based epoch and step within it.
        Losses that change over training (IB's switch, SEQL's draws) read it; others ignore it."""

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Counts) -> CountsLoss:
        return cls(class_counts)

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


class CrossEntropy(CountsLoss):
    """Plain softmax cross-entropy (the counts are only kept for a uniform interface)."""

    soft_targets = True

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        return soft_cross_entropy(z, target, weight)


class FocalLoss(CountsLoss):
    """(1 - p_t)^γ · CE_t per sample (Lin et al.); γ = 0 is CE.

    With a class weight the sample term is w_{y} (1 - p_t)^γ CE_t and the batch reduction is a
    plain mean over N, as in the LDAM-DRW code (not F.cross_entropy's weighted mean). Unlike that
    code, p_t is the model's probability, not exp(-weighted CE), which is no probability.
    """

    def __init__(self, class_counts: Counts, gamma: float) -> None:
        super().__init__(class_counts)
        self.gamma = float(gamma)

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Counts) -> FocalLoss:
        return cls(class_counts, cfg.focal_gamma)

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        log_pt = F.log_softmax(z, dim=1).gather(1, target[:, None]).squeeze(1)
        # 1 - p_t = -expm1(log p_t) keeps full precision as p_t -> 1. The floor at the smallest
        # normal number keeps γ (1 - p_t)^(γ-1) in the gradient finite when p_t rounds to 1
        # (there the clamp passes no gradient and the term is 0 anyway).
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(z.dtype).tiny)
        per_sample = one_minus_pt.pow(self.gamma) * -log_pt
        if weight is not None:
            per_sample = per_sample * weight[target]
        return per_sample.mean()


class LDAMLoss(CountsLoss):
    """Label-distribution-aware margins (Cao et al.): CE(s · (cos - m_y e_y)).

    The logits must be cosines in [-1, 1] from a normalised classifier (the model's
    `cosine_classifier`, which outputs cos, unscaled); the scale `s` lives here. Margins are
    m_c = max_m · (n_min / n_c)^(1/4), so the rarest class gets max_m; only the target logit
    is lowered.
    """

    needs_positive_counts = "The LDAM loss"

    def __init__(self, class_counts: Counts, max_m: float, s: float) -> None:
        super().__init__(class_counts)
        counts = self.class_counts.double()
        self.register_buffer("margins", (max_m * (counts.min() / counts) ** 0.25).float())
        self.s = float(s)

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Counts) -> LDAMLoss:
        return cls(class_counts, cfg.ldam_max_m, cfg.ldam_s)

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        m_y = self.margins.to(z.dtype)[target]
        margin = torch.zeros_like(z).scatter_(1, target[:, None], m_y[:, None])
        return F.cross_entropy(self.s * (z - margin), target, weight=weight)


class BalancedSoftmax(CountsLoss):
    """CE(z + log n) (Ren et al.): train under the long-tailed prior, predict with plain z."""

    needs_positive_counts = "Balanced Softmax"
    soft_targets = True

    def __init__(self, class_counts: Counts) -> None:
        super().__init__(class_counts)
        self.register_buffer("log_counts", self.class_counts.double().log().float())

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        return soft_cross_entropy(z + self.log_counts, target, weight)


class LogitAdjustment(CountsLoss):
    """CE(z + τ log π), π = n / Σ n (Menon et al.); τ = 1 equals Balanced Softmax, τ = 0 CE."""

    needs_positive_counts = "Logit adjustment"
    soft_targets = True

    def __init__(self, class_counts: Counts, tau: float) -> None:
        super().__init__(class_counts)
        self.tau = float(tau)
        counts = self.class_counts.double()
        self.register_buffer("log_prior", (counts / counts.sum()).log().float())

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Counts) -> LogitAdjustment:
        return cls(class_counts, cfg.la_tau)

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        return soft_cross_entropy(z + self.tau * self.log_prior, target, weight)


class InfluenceBalancedLoss(CountsLoss):
    """CE before `start_epoch`, then the influence-balanced loss (lwrcli.methods.influence) with its
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

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Counts) -> InfluenceBalancedLoss:
        return cls(
            class_counts, cfg.ib_start_epoch, cfg.ib_alpha, cfg.ib_epsilon, cfg.ib_class_weight
        )

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
                "FeatureCapture on the classifier (lwrcli.methods.influence)"
            )
        if self.ib_weight is not None:
            weight = self.ib_weight.to(z.dtype)
        return influence_balanced_loss(z, target, features, self.alpha, self.epsilon, weight)


class SoftmaxEqualizationLoss(CountsLoss):
    """SEQL (lwrcli.methods.equalization): CE whose denominator drops each non-target tail class
    (frequency < λ) with probability γ, drawn per sample and class from a generator seeded by
    (run seed, epoch, step, call within the step, rank) — the same draws on a resumed run."""

    def __init__(self, class_counts: Counts, gamma: float, threshold: float) -> None:
        super().__init__(class_counts)
        self.gamma, self.threshold = float(gamma), float(threshold)
        self.register_buffer("tail", tail_classes(self.class_counts, self.threshold))
        self.position = (0, 0)
        self.calls = 0  # forward calls at this position (micro-batches of one step)

    @classmethod
    def from_config(cls, cfg: LossConfig, class_counts: Counts) -> SoftmaxEqualizationLoss:
        return cls(class_counts, cfg.seql_gamma, cfg.seql_lambda)

    def set_position(self, epoch: int, step: int) -> None:
        self.position, self.calls = (int(epoch), int(step)), 0

    def draw_seed(self) -> int:
        """The generator seed of the next call (and count the call)."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        seed = position_seed(self.seed, *self.position, self.calls, rank)
        self.calls += 1
        return seed

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        drop = draw_drops(target, self.tail, self.gamma, self.draw_seed(), z.device)
        return equalized_cross_entropy(z, target, drop, weight)


class DotRegression(CountsLoss):
    """Dot regression for a fixed simplex-ETF head (Yang et al., NeurIPS 2022):
    ℓ_i = 1/2 (w_y · h_i - |w_y| |h_i|)^2 / |h_i| on the authors' normalised features.

    The ETF head (`model.etf_classifier`) outputs z_ic = w_c · h_i with unit rows and unit
    features, so ℓ_i = 1/2 (z_iy - 1)^2: it pulls each feature toward its class's vertex and,
    unlike CE, never pushes it from the others (the fixed simplex already keeps classes
    apart). A class weight gives the weighted mean Σ w_y ℓ_i / Σ w_y.

    Soft targets q (N, C) take the expected hard loss, Σ_c q_ic 1/2 (z_ic - 1)^2 (weighted:
    Σ_i Σ_c w_c q_ic ℓ_ic / Σ_i Σ_c w_c q_ic, like soft CE). For mixup's q = λ e_a + (1-λ) e_b
    that is exactly the authors' λ ℓ(y_a) + (1-λ) ℓ(y_b); one-hot q gives the hard loss.
    """

    soft_targets = True

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        if target.dim() == 2:
            per_class = 0.5 * (z - 1.0).square()
            wq = target if weight is None else target * weight
            if weight is None:
                return (wq * per_class).sum(1).mean()
            return (wq * per_class).sum() / wq.sum()
        per_sample = 0.5 * (z.gather(1, target[:, None]).squeeze(1) - 1.0).square()
        if weight is None:
            return per_sample.mean()
        w = weight[target]
        return (w * per_sample).sum() / w.sum()


LOSSES: dict[str, type[CountsLoss]] = {
    "ce": CrossEntropy,
    "focal": FocalLoss,
    "ldam": LDAMLoss,
    "bs": BalancedSoftmax,
    "la": LogitAdjustment,
    "ib": InfluenceBalancedLoss,
    "seql": SoftmaxEqualizationLoss,
    "dr": DotRegression,
}


def soft_target_losses() -> list[str]:
    """Config names of the losses that accept (N, C) probability targets."""
    return [name for name, cls in LOSSES.items() if cls.soft_targets]


def build_loss(cfg: LossConfig, class_counts: Counts, seed: int = 0) -> CountsLoss:
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
    loss = LOSSES[cfg.name].from_config(cfg, counts)
    loss.seed = int(seed)
    return loss


def class_balanced_weights(class_counts: Counts, beta: float) -> Tensor:
    """Effective-number weights w_c = (1 - β) / (1 - β^n_c) (Cui et al.), summing to C. (C,) f64."""
    counts = as_counts(class_counts)
    require_positive_counts(counts, "Class-balanced re-weighting")
    effective = -torch.expm1(counts * torch.log(torch.tensor(beta, dtype=torch.float64)))
    w = (1.0 - beta) / effective
    return w * (counts.numel() / w.sum())


def reweight_for_epoch(cfg: LossConfig, class_counts: Counts, epoch: int) -> Tensor | None:
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
