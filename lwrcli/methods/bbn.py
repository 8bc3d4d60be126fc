"""BBN (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative Learning", CVPR 2020) as
a model variant: `model.variant: {name: bbn}`.

The network's last residual block is duplicated into a conventional and a re-balancing
branch (lwrcli.models.bbn), fed by the instance and the reversed sampler each step
(lwrcli.data.paired), one head over both; the branches are weighted by the cumulative-learning
α = 1 - (T / T_max)^2, set before each epoch, and 0.5 at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from lwrcli.config.sections import VariantSection
from lwrcli.data.paired import REVERSED_SEED_OFFSET, PairedLoader, cumulative_alpha
from lwrcli.methods.base import Method, RunParts
from lwrcli.models.bbn import BBNNet, to_bbn

# BBN trains on the soft target α e_yc + (1 - α) e_yr: these losses take it.
SOFT_TARGET_LOSSES = ("ce", "bs", "la")


class BBNConfig(VariantSection):
    name: Literal["bbn"] = "bbn"


class BBNMethod(Method):
    name, slot, label, config = "bbn", "variant", "BBN", BBNConfig

    def restructure(self, model: nn.Module, section: Any, model_cfg: Any) -> nn.Module:
        pretrained = model_cfg.pretrained is not None or bool(model_cfg.weights)
        return to_bbn(model, model_cfg.name, pretrained=pretrained)

    def train_loader(
        self, loader: Any, second: Callable[..., Any], cfg: Any, num_classes: int
    ) -> Any:
        """Each step: an instance batch and a reversed-sampler batch of the same split."""
        reversed_ = second(sampler="reversed", seed=cfg.seed + REVERSED_SEED_OFFSET)
        return PairedLoader(loader, reversed_, num_classes, cfg.epochs)

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        """The model weights its branches as the loader its targets, epoch by epoch."""
        model, epochs = parts.raw_model, cfg.epochs
        if isinstance(model, BBNNet):
            parts.before_epoch.append(
                lambda epoch: model.set_alpha(cumulative_alpha(epoch, epochs))
            )

    def check(self, cfg: Any) -> None:
        m = cfg.model
        if m.variant.name != "bbn":
            return
        if m.name == "small_cnn" or m.name.startswith(("clip:", "timm:")):
            raise ValueError(
                f"model.variant.name=bbn duplicates a ResNet's last residual block; {m.name} "
                "has none. Use resnet32 (CIFAR), resnet50, resnext50_32x4d, resnet152 or a "
                "torchvision:<ResNet> name"
            )
        if m.tuning != "full":
            raise ValueError(
                "model.variant.name=bbn trains the whole network: set model.tuning=full"
            )
        if cfg.data.sampler != "instance":
            raise ValueError(
                f"model.variant.name=bbn: BBN's conventional branch sees the instance sampler and "
                f"its re-balancing branch the reversed one; data.sampler={cfg.data.sampler} "
                "would replace the first. Set data.sampler=instance"
            )
        if cfg.loss.name not in SOFT_TARGET_LOSSES:
            raise ValueError(
                f"model.variant.name=bbn trains on the soft target a e_yc + (1 - a) e_yr, which "
                f"loss.name={cfg.loss.name} cannot take (it needs one class per sample). Use "
                "ce (BBN's loss), bs or la"
            )
        if cfg.section("mixing").active or cfg.section("label_smoothing").active:
            raise ValueError(
                "model.variant.name=bbn already mixes each step's two batches into soft targets "
                "(a e_yc + (1 - a) e_yr); mixup/CutMix and label smoothing on top of them are "
                "not supported: set mixing.mixup_alpha=0, mixing.cutmix_alpha=0 and "
                "label_smoothing.epsilon=0"
            )
        stage2 = cfg.section("stage2")
        if stage2.mode != "none" or stage2.cache_features:
            raise ValueError(
                "model.variant.name=bbn is a one-stage method: stage2.mode and "
                "stage2.cache_features do not apply to it (train the stage-2 run without it)"
            )


METHOD = BBNMethod()
