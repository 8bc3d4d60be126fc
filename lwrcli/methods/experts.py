"""Multi-expert models as a model variant, `model.variant: {name: experts}`, and what the
expert losses share (lwrcli.methods.ride, sade, balpoe).

The variant splits a ResNet into a shared trunk and K expert branches with their own
classifiers (lwrcli.models.experts, after RIDE's network). The model's output is the mean of
the experts' logits, so evaluation, predict and export use it like any model; an expert loss
reads every expert's logits (B, K, C) from an `ExpertCapture`, a forward hook on the heads
that keeps their output of the last training forward (as lwrcli.methods.ib's FeatureCapture
keeps the head's input).

LWR acts on every expert's classifier: R is the mean over the K heads of R(W_k)
(lwrcli.train.lwr), so it reads on the single-head scale. `lwr.lambda_max: auto` multiplies the
class-count rule by K for that mean and by the loss's weight on each expert's loss (1 where
the experts' losses are summed, RIDE and SADE; 1/K where they are averaged, BalPoE), so each
head sees LWR's share of its gradient that a single head sees at the same class count.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lwrcli.config.sections import VariantSection
from lwrcli.config.slots import methods_of, slot_method
from lwrcli.methods.base import Method, RunParts
from lwrcli.methods.losses import CountsLoss, LossMethod

TORCHVISION_RESNETS = ("resnet", "resnext", "wide_resnet")


class ExpertsConfig(VariantSection):
    """K experts over a shared trunk (RIDE's network); reduce_width: RIDE's 3/4-wide experts;
    shared_stages: stages before the split (None: 1 for resnet32, 2 for torchvision ResNets)."""

    name: Literal["experts"] = "experts"
    num_experts: int = Field(3, ge=2, le=16)
    reduce_width: bool = False
    shared_stages: int | None = Field(None, ge=1, le=3)


def stages_of(model_name: str) -> int | None:
    """Residual stages of a supported backbone (3 for resnet32, 4 for torchvision ResNets),
    None for any other model."""
    if model_name == "resnet32":
        return 3
    arch = model_name.removeprefix("torchvision:")
    if model_name in ("resnet50", "resnext50_32x4d", "resnet152"):
        return 4
    if model_name.startswith("torchvision:") and arch.startswith(TORCHVISION_RESNETS):
        return 4
    return None


class ExpertsMethod(Method):
    name, slot, label, config = "experts", "variant", "experts", ExpertsConfig

    def describe(self, section: Any) -> str:
        return f"{section.num_experts} experts" + (" (reduced)" if section.reduce_width else "")

    def restructure(self, model: nn.Module, section: Any, model_cfg: Any) -> nn.Module:
        from lwrcli.models.experts import to_experts

        pretrained = model_cfg.pretrained is not None or bool(model_cfg.weights)
        return to_experts(
            model,
            model_cfg.name,
            section.num_experts,
            section.shared_stages,
            section.reduce_width,
            model_cfg.norm,
            pretrained,
        )

    def lambda_factor(self, cfg: Any) -> float:
        """R averages over the K heads: K times λ gives each head a single head's push."""
        return float(cfg.model.variant.num_experts)

    def check(self, cfg: Any) -> None:
        m = cfg.model
        if m.variant.name != "experts":
            return
        variant = m.variant
        stages = stages_of(m.name)
        if stages is None:
            raise ValueError(
                f"model.variant.name=experts splits a ResNet into a shared trunk and expert "
                f"branches; {m.name} is not one. Use resnet32 (CIFAR), resnet50, "
                "resnext50_32x4d, resnet152 or a torchvision:<ResNet> name"
            )
        if variant.shared_stages is not None and variant.shared_stages >= stages:
            raise ValueError(
                f"model.variant.shared_stages={variant.shared_stages}: {m.name} has {stages} "
                f"stages, so at most {stages - 1} can be shared (the experts need one)"
            )
        if m.tuning != "full":
            raise ValueError("model.variant.name=experts trains the whole network: set tuning=full")
        if m.head.name not in ("linear", "cosine"):
            raise ValueError(
                f"model.variant.name=experts gives every expert a linear or cosine classifier; "
                f"model.head.name={m.head.name} is not supported: use linear or cosine"
            )
        if m.head_init != "random":
            raise ValueError(
                f"model.head_init={m.head_init} initialises one classifier; the experts' heads "
                "start random: set model.head_init=random"
            )
        loss = slot_method("loss", cfg.loss.name)
        if not getattr(loss, "expert_loss", False):
            family = methods_of("loss").items()
            names = ", ".join(n for n, x in family if getattr(x, "expert_loss", False))
            raise ValueError(
                f"model.variant.name=experts trains each expert with its own loss; "
                f"loss.name={cfg.loss.name} sees only their mean. Use an expert loss ({names})"
            )
        stage2 = cfg.section("stage2")
        if cfg.init.reset_classifier or stage2.mode != "none" or stage2.cache_features:
            raise ValueError(
                "model.variant.name=experts is a one-stage method: stage 2 (stage2.mode, "
                "init.reset_classifier) re-learns one classifier, not K"
            )
        if cfg.section("max_norm").radius is not None:
            raise ValueError(
                "max_norm projects one classifier's rows; with K experts it is not supported: "
                "set max_norm.radius=null"
            )


class ExpertCapture:
    """Keeps the experts' logits (B, K, C) of the last training forward: a forward hook on the
    model's ExpertHeads. Only in training mode with gradients on; `take()` hands them over and
    forgets them, so no graph outlives its step."""

    def __init__(self, heads: nn.Module) -> None:
        self.logits: Tensor | None = None
        self.handle: RemovableHandle = heads.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[object, ...], output: Tensor) -> None:
        if module.training and torch.is_grad_enabled():
            self.logits = output

    def take(self) -> Tensor | None:
        logits, self.logits = self.logits, None
        return logits

    def remove(self) -> None:
        self.handle.remove()
        self.logits = None


class ExpertLoss(CountsLoss):
    """A loss on every expert's logits: `loss(z, target, weight)` receives the aggregate z
    (N, C) from the engine and takes the experts' (N, K, C) from the capture `build` attaches,
    then calls `expert_loss` (float32 at least, like every loss)."""

    needs_model_outputs = True  # reads the experts' logits, not only the aggregate

    def __init__(self, class_counts: Any) -> None:
        super().__init__(class_counts)
        self.experts: ExpertCapture | None = None

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        experts = self.experts.take() if self.experts is not None else None
        if experts is None or experts.shape[0] != z.shape[0]:
            raise RuntimeError(
                "an expert loss needs every expert's logits of this batch: build attaches an "
                "ExpertCapture on the model's heads (lwrcli.methods.experts)"
            )
        experts = experts.float() if experts.dtype in (torch.float16, torch.bfloat16) else experts
        return self.expert_loss(z, experts, target, weight)

    def expert_loss(
        self, z: Tensor, experts: Tensor, target: Tensor, weight: Tensor | None
    ) -> Tensor:
        raise NotImplementedError


class ExpertLossMethod(LossMethod):
    """A loss of the multi-expert family: needs `model.variant: experts`, reads the experts'
    logits through the capture attached here."""

    expert_loss: ClassVar[bool] = True

    def required_experts(self, section: Any) -> int | None:
        """How many experts the loss is defined for (None: any)."""
        return None

    def check(self, cfg: Any) -> None:
        if cfg.loss.name != self.name:
            return
        variant = cfg.model.variant
        if variant.name != "experts":
            raise ValueError(
                f"loss.name={self.name} trains the experts of a multi-expert model: set "
                "model.variant.name=experts (model.variant.num_experts, reduce_width)"
            )
        k = self.required_experts(cfg.loss)
        if k is not None and variant.num_experts != k:
            raise ValueError(
                f"loss.name={self.name} is defined for {k} experts here; "
                f"model.variant.num_experts={variant.num_experts}: set it to {k}"
            )

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        from lwrcli.models.experts import find_experts

        parts.loss.experts = ExpertCapture(find_experts(parts.raw_model).fc)


METHOD = ExpertsMethod()
