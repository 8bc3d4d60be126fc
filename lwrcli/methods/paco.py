"""PaCo (Cui et al., "Parametric Contrastive Learning", ICCV 2021) and GPaCo ("Generalized
Parametric Contrastive Learning", Cui et al., the arXiv paper of the same repository) as
losses: `loss.name: paco` and `loss.name: gpaco`.

Read from the authors' long-tail code (dvlab-research/Parametric-Contrastive-Learning:
LT/losses.py, LT/moco/builder.py, LT/paco_lt.py, LT/paco_cifar.py, and the GPaCo/LT
versions of the same files), written here from the equations, not copied.

Each image comes as two augmented views. A view's embedding is q = normalize(g(h)) (g the
projection MLP on the head's input h, lwrcli.models.contrastive), its class logits are the
classifier's: the classifier rows are PaCo's learnable class centres, compared with h. For an
anchor i with label y_i, a contrast set A (embeddings a_j with labels y_j; i itself excluded)
and the centre logits s_ic = (z_ic + log π_c) / τ_c (z the classifier's logits, π the class
prior when `balanced`, the authors' `sup_logits + log(weight)`):

    D_i  = Σ_c exp(s_ic) + γ Σ_{j ∈ A, j ≠ i} exp(q_i · a_j / τ)
    L_i  = - [ β (s_{i y_i} - log D_i) + α Σ_{j ∈ P(i)} (q_i · a_j / τ - log D_i) ]
             / (β + α |P(i)|),          P(i) = {j ∈ A, j ≠ i, y_j = y_i}
    L    = mean over anchors

- PaCo: the anchors are the first view's embeddings q; the second view goes through a momentum
  encoder (an EMA copy of network and projector, m = 0.999, lwrcli.models.MomentumEncoder) to
  keys k without gradient; A = [q, k, queue].
- GPaCo: no momentum encoder; both views go through the network, and both are anchors with
  their own centre logits; A = [q, k, queue], k with gradient.

The queue (lwrcli.methods.contrastive.FeatureQueue) holds the last K keys of the global batch
(K = 8192 for ImageNet-LT, the authors' --moco-k default in paco_lt.py; 1024 for CIFAR, their
sh scripts). Queue and momentum encoder are saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from lwrcli.methods.base import RunParts
from lwrcli.methods.contrastive import (
    ContrastiveLoss,
    ContrastiveMethod,
    ContrastiveSection,
    FeatureQueue,
    process_group,
    state_prefix,
    under,
)
from lwrcli.models.contrastive import MomentumEncoder
from lwrcli.runtime.device import autocast_context


def paco_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    self_index: Tensor,
    centre_logits: Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    temperature: float,
    centre_temperature: float = 1.0,
) -> Tensor:
    """The PaCo loss (module docstring) for anchors (A, p), contrast set (M, p) with labels
    (A,), (M,), each anchor's own row in the contrast set `self_index` (A,) (-1: none), and
    centre logits (A, C) (the prior already added). Returns the mean over anchors."""
    a, m = anchors.shape[0], contrast.shape[0]
    sims = anchors @ contrast.t() / temperature  # (A, M)
    others = torch.ones(a, m, dtype=torch.bool, device=anchors.device)
    rows = torch.arange(a, device=anchors.device)
    own = self_index >= 0
    others[rows[own], self_index[own]] = False
    positive = (anchor_labels[:, None] == contrast_labels[None, :]) & others
    centre = centre_logits / centre_temperature
    parts = [centre]
    if gamma > 0:
        parts.append(sims.masked_fill(~others, float("-inf")) + torch.log(sims.new_tensor(gamma)))
    log_d = torch.logsumexp(torch.cat(parts, dim=1), dim=1)  # (A,)
    w_pos = positive.to(sims.dtype) * alpha
    own_centre = centre.gather(1, anchor_labels[:, None]).squeeze(1)
    numerator = beta * own_centre + (w_pos * sims).sum(1)
    weight = beta + w_pos.sum(1)
    return (-(numerator - weight * log_d) / weight).mean()


class PaCoLossModule(ContrastiveLoss):
    """PaCo / GPaCo on the network's kept views (module docstring). The momentum encoder and
    queue are set by the method's attach (a queue of size 0: no queue)."""

    needs_positive_counts = "PaCo's balanced centre logits (log of the class prior)"

    def __init__(self, class_counts: Any, section: Any, generalized: bool) -> None:
        super().__init__(class_counts)
        self.generalized = generalized
        self.alpha, self.beta, self.gamma = section.alpha, section.centre_weight, section.gamma
        self.temperature = section.temperature
        self.centre_temperature = section.centre_temperature
        counts = self.class_counts.double()
        prior = (counts / counts.sum()).log() if section.balanced else torch.zeros_like(counts)
        self.register_buffer("log_prior", prior.float())
        self.key_encoder: MomentumEncoder | None = None
        self.queue: FeatureQueue | None = None

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        out = self.outputs()
        logits, emb = out.logits.float(), out.embeddings.float()
        q = emb[:, 0]
        if self.generalized:
            k = emb[:, 1]
            anchors, centre = torch.cat([q, k]), torch.cat([logits[:, 0], logits[:, 1]])
            anchor_labels = torch.cat([target, target])
        else:
            assert self.key_encoder is not None and out.rest is not None
            k = self.key_encoder.keys(out.rest[:, 0])
            anchors, centre, anchor_labels = q, logits[:, 0], target
        queued, queued_labels = (
            self.queue.contents() if self.queue is not None else (q[:0], target[:0])
        )
        contrast = torch.cat([q, k, queued.to(q.dtype)])
        contrast_labels = torch.cat([target, target, queued_labels])
        self_index = torch.arange(anchors.shape[0], device=q.device)
        value = paco_loss(
            anchors,
            anchor_labels,
            contrast,
            contrast_labels,
            self_index,
            centre + self.log_prior,
            self.alpha,
            self.beta,
            self.gamma,
            self.temperature,
            self.centre_temperature,
        )
        if self.queue is not None:
            self.queue.push(k, target)
        return value


class PaCoConfig(ContrastiveSection):
    """PaCo: weights α (sample positives), β = centre_weight (the class centre), γ (samples in
    the denominator); temperature of the sample terms; queue of K past keys; key encoder momentum.
    Defaults: the authors' ImageNet-LT ResNet-50 script (LT/sh/ImageNetLT_train_R50.sh)."""

    name: Literal["paco"] = "paco"
    alpha: float = Field(0.05, ge=0.0, le=100.0, description="weight of each sample positive")
    # β of the paper (`beta` is the loss section's class-balanced-weights β).
    centre_weight: float = Field(1.0, gt=0.0, le=100.0, description="β, the class centre's")
    gamma: float = Field(1.0, ge=0.0, le=100.0, description="weight of samples in the sum")
    temperature: float = Field(0.2, gt=0.0, le=10.0, description="of the sample terms")
    centre_temperature: float = Field(1.0, gt=0.0, le=10.0, description="the authors' supt")
    queue: int = Field(8192, ge=0, le=10_000_000, description="past keys contrasted, K")
    momentum: float = Field(0.999, ge=0.0, lt=1.0, description="key encoder EMA")
    # Centre logits + log of the class prior (the authors' LT code); false: plain logits.
    balanced: bool = True


class GPaCoConfig(PaCoConfig):
    """GPaCo: PaCo without the momentum encoder (both views are anchors). Defaults: the
    authors' ImageNet-LT ResNet-50 script (GPaCo/LT/sh/LT/ImageNetLT_train_R50.sh) and MLP
    (GPaCo/LT/moco/builder.py)."""

    name: Literal["gpaco"] = "gpaco"  # type: ignore[assignment]
    alpha: float = Field(0.045, ge=0.0, le=100.0, description="weight of each sample positive")
    mlp: Literal["bn", "relu2"] = "relu2"


class PaCoMethod(ContrastiveMethod):
    name, label, config, loss_class = "paco", "PaCo", PaCoConfig, PaCoLossModule
    generalized = False

    def describe(self, section: Any) -> str:
        return f"{self.label} (α={section.alpha:g}, τ={section.temperature:g}, K={section.queue})"

    def make(self, section: Any, class_counts: Tensor) -> PaCoLossModule:
        return PaCoLossModule(class_counts, section, self.generalized)

    def net_views(self, section: Any) -> int | None:
        return None if self.generalized else 1  # PaCo: the key view goes to the key encoder

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        """The momentum encoder (PaCo) and the queue, with their state in every checkpoint
        and after-step updates; a resumed run continues both."""
        super().attach(parts, cfg, saved)
        section, loss, model = cfg.loss, parts.loss, parts.raw_model
        prefix = state_prefix(self.name)
        weight = next(model.parameters())
        if section.queue > 0:
            queue = FeatureQueue(section.queue, section.dim, weight.device, process_group())
            if saved is not None:
                queue.load(saved.extras, prefix + "queue.")
            loss.queue = queue
            parts.after_step.append(queue.commit)
            parts.checkpoint_tensors.append(lambda: queue.state_tensors(prefix + "queue."))
        if not self.generalized:
            amp = cfg.amp

            def autocast() -> Any:
                return autocast_context(weight.device, amp)

            encoder = MomentumEncoder(model, section.momentum, autocast)
            if saved is not None:
                encoder.load(under(saved.extras, prefix + "key."))
            loss.key_encoder = encoder
            parts.after_step.append(encoder.update)
            parts.checkpoint_tensors.append(
                lambda: {prefix + "key." + k: v for k, v in encoder.named_tensors()}
            )


class GPaCoMethod(PaCoMethod):
    name, label, config = "gpaco", "GPaCo", GPaCoConfig  # type: ignore[assignment]
    generalized = True


METHOD = PaCoMethod()
GPACO = GPaCoMethod()
