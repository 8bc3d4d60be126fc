"""Decoupled classifier training (Kang et al., ICLR 2020), section `stage2:`: on a frozen
representation, re-train the classifier (cRT) or learn only per-class scales of the trained
one (LWS); optionally on features computed once (lwrcli.methods.stage2_cache), or with
MiSLAS's shifted BatchNorm statistics.

The stage-1 weights come in through the core `init` section (`--init RUN/checkpoints/
last.safetensors`, with `init.reset_classifier` for cRT); this module freezes the backbone
and rebuilds an LWS head, for training and for every user of an LWS checkpoint.
"""

from __future__ import annotations

import types
from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import nn

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.config.sections import Section
from lwrcli.errors import UserError
from lwrcli.methods.base import Method
from lwrcli.models.heads import LWSHead, get_classifier, head_path, set_head


class Stage2Config(Section):
    """crt: re-initialised classifier; lws: only per-class scales s_c learn. Both freeze the
    backbone, BatchNorm statistics included."""

    mode: Literal["none", "crt", "lws"] = "none"
    freeze: Literal["none", "backbone"] = "none"
    # Backbone features computed once and the head trained on them (augmentation must be off).
    cache_features: bool = False
    # MiSLAS's shifted BatchNorm: the frozen backbone's BN running statistics follow the
    # stage-2 (re-sampled) batches; every parameter, BN affine ones included, stays frozen.
    train_bn: bool = False

    @property
    def frozen_backbone(self) -> bool:
        return self.freeze == "backbone" or self.mode != "none"

    @model_validator(mode="after")
    def _consistent(self) -> Stage2Config:
        if self.cache_features and not self.frozen_backbone:
            raise ValueError(
                "stage2.cache_features needs a frozen backbone (stage2.mode=crt or lws, or "
                "stage2.freeze=backbone): features of a training backbone change every step"
            )
        if self.train_bn and not self.frozen_backbone:
            raise ValueError(
                "stage2.train_bn updates the BatchNorm statistics of a frozen backbone: set "
                "stage2.freeze=backbone (or stage2.mode=crt/lws); a trained backbone's BN "
                "statistics update anyway"
            )
        return self


def apply_structure(model: nn.Module, section: Any) -> nn.Module:
    """The head's structure for the section: an LWSHead around the classifier for LWS."""
    if section.mode == "lws" and not isinstance(get_classifier(model), LWSHead):
        set_head(model, LWSHead(get_classifier(model)))
    return model


def _train_eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    """`Module.train` of a frozen backbone part: always evaluation mode, so BatchNorm running
    statistics stay those of stage 1 and dropout stays off."""
    return nn.Module.train(self, False)


def _train_bn_only(self: nn.Module, mode: bool = True) -> nn.Module:
    """`Module.train` of a frozen backbone part with shifted BatchNorm (MiSLAS): this module
    stays in evaluation mode and passes `mode` on, so only BatchNorm layers follow it."""
    self.training = False
    for child in self.children():
        child.train(mode)
    return self


def backbone_roots(model: nn.Module) -> list[nn.Module]:
    """The largest submodules that hold no part of the classifier head."""
    head = head_path(model)
    roots: list[nn.Module] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path == head:
                continue
            if head.startswith(path + "."):
                visit(child, path + ".")
            else:
                roots.append(child)

    visit(model, "")
    return roots


def freeze_backbone(model: nn.Module, train_bn: bool = False) -> None:
    """Every parameter outside the head stops learning, and the backbone stays in eval mode
    whatever `model.train()` says (the override is per instance; state dicts are unchanged).
    `train_bn` (MiSLAS's shifted BN, `stage2.train_bn`): BatchNorm layers still follow
    `model.train()`, so in training they normalise with batch statistics and update their
    running statistics; their affine parameters stay frozen, as in MiSLAS's train_stage2.py
    (the backbone runs under no_grad and only the classifier is optimised)."""
    head = head_path(model) + "."
    for name, p in model.named_parameters():
        if not name.startswith(head):
            p.requires_grad_(False)
    for root in backbone_roots(model):
        for m in root.modules():
            if train_bn and isinstance(m, nn.modules.batchnorm._BatchNorm):
                continue  # follows model.train()
            override = _train_bn_only if train_bn else _train_eval_only
            m.train = types.MethodType(override, m)  # type: ignore[method-assign]
        root.eval()


class Stage2Method(Method):
    name, slot, key, label, config = "stage2", "trick", "stage2", "stage 2", Stage2Config

    def active(self, section: Any) -> bool:
        return section.frozen_backbone or section.cache_features or section.train_bn

    def acting(self, section: dict[str, Any]) -> set[str]:
        return set(section) if self.active(self.config.model_validate(section)) else {"mode"}

    def describe(self, section: Any) -> str:
        what = {"crt": "cRT", "lws": "LWS", "none": "frozen backbone"}[section.mode]
        return what + (" (shifted BN)" if section.train_bn else "")

    def check(self, cfg: Any) -> None:
        s2 = cfg.section("stage2")
        if s2.mode == "crt" and not cfg.init.reset_classifier:
            raise ValueError(
                "stage2.mode=crt re-trains the classifier: set init.reset_classifier=true"
            )
        if s2.mode == "lws" and cfg.init.reset_classifier:
            raise ValueError(
                "stage2.mode=lws learns scales of the trained classifier: set "
                "init.reset_classifier=false"
            )
        if not s2.cache_features:
            return
        if s2.train_bn or cfg.section("mixing").active:
            raise ValueError(
                "stage2.cache_features computes each image's features once, which neither "
                "stage2.train_bn (statistics change every batch) nor mixup/CutMix (images mixed "
                "every batch) allows: set stage2.cache_features=false"
            )
        if cfg.section("ema").enabled:
            raise ValueError(
                "stage2.cache_features trains the head alone on cached features: ema.enabled "
                "is not supported there; set ema.enabled=false or stage2.cache_features=false"
            )
        if cfg.data.augment != "none":
            raise ValueError(
                f"stage2.cache_features computes each image's features once, so "
                f"data.augment={cfg.data.augment} cannot apply: set data.augment=none"
            )
        if cfg.data.crop_padding > 0 or cfg.data.flip:
            raise ValueError(
                "stage2.cache_features computes each image's features once, so augmentation "
                "must be off: set data.crop_padding=0 and data.flip=false (or "
                "stage2.cache_features=false to augment with the backbone under no_grad)"
            )

    def check_start(self, cfg: Any, manifest: Any) -> None:
        """A stage-2 recipe needs its stage-1 checkpoint, and that one must not be LWS."""
        s2, model = cfg.section("stage2"), cfg.model
        if s2.mode != "none" and cfg.init.checkpoint is None:
            raise UserError(
                f"'{cfg.name}' is a stage-2 recipe (stage2.mode={s2.mode}): pass the "
                "stage-1 weights with --init RUN/checkpoints/last.safetensors."
            )
        if (
            s2.freeze == "backbone"
            and cfg.init.checkpoint is None
            and model.weights is None
            and model.pretrained is None
        ):
            raise UserError(
                f"'{cfg.name}' trains on a frozen backbone (stage2.freeze=backbone), but nothing "
                "gives that backbone its weights: pass the stage-1 run with --init "
                "RUN/checkpoints/last.safetensors (or model.weights / model.pretrained)."
            )
        if cfg.init.checkpoint is not None:
            init = load_checkpoint(cfg.init.checkpoint)
            if init.config.section("stage2").mode == "lws":
                raise UserError(
                    f"init.checkpoint {cfg.init.checkpoint} is an LWS run; start stage 2 from "
                    "stage 1."
                )

    def adapt_run_model(self, model: nn.Module, cfg: Any) -> nn.Module:
        s2 = cfg.section("stage2")
        if s2.frozen_backbone:
            freeze_backbone(model, s2.train_bn)
        return apply_structure(model, s2)

    def eval_structure(self, model: nn.Module, cfg: Any) -> nn.Module:
        return apply_structure(model, cfg.section("stage2"))

    def replace_parts(self, parts: Any, cfg: Any, device: torch.device) -> Any:
        if cfg.section("stage2").cache_features:
            # Imported here: its loader pulls torchvision, which validation must not load.
            from lwrcli.methods.stage2_cache import use_cached_features

            return use_cached_features(parts, cfg, device)
        return parts


METHOD = Stage2Method()
