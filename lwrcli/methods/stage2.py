"""Stage-2 model surgery (decoupled training, Kang et al. 2020): start from another run's
weights, re-initialise the classifier (cRT), freeze the backbone with its BatchNorm
statistics, or learn only per-class scales of the trained classifier (LWS).

`prepare_stage2` is called once by build_components; `apply_structure` alone rebuilds an
LWS head so `lwr eval` can load an LWS checkpoint (whose head holds `scales`).
"""

from __future__ import annotations

import types
from pathlib import Path

from torch import nn

from lwrcli.config.schema import TrainConfig
from lwrcli.data.manifest import Manifest
from lwrcli.errors import UserError
from lwrcli.models import CosineLinear, LWSHead, get_classifier, head_path, set_head
from lwrcli.train.checkpoint import Checkpoint, load_checkpoint
from lwrcli.train.frozen_base import restore_weights


def apply_structure(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The head's structure for the config: an LWSHead around the classifier for LWS."""
    if cfg.stage2.mode == "lws" and not isinstance(get_classifier(model), LWSHead):
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


def reset_classifier(model: nn.Module) -> None:
    """A freshly initialised head of the same shape (cRT), from the global RNG (seeded)."""
    head = get_classifier(model)
    if isinstance(head, CosineLinear):
        fresh = CosineLinear(head.weight.shape[1], head.weight.shape[0], head.scale)
        fresh = fresh.to(head.weight.device)
        set_head(model, fresh)
    elif hasattr(head, "reset_parameters"):
        head.reset_parameters()
    else:
        raise UserError(f"Cannot re-initialise a {type(head).__name__} head for cRT.")


def load_init(path: Path, manifest: Manifest, cfg: TrainConfig) -> Checkpoint:
    """The init checkpoint, checked against the dataset (class list, fingerprint) and the
    model config; every mismatch is a UserError naming what differs."""
    ckpt = load_checkpoint(path)
    if ckpt.class_names != manifest.class_names:
        raise UserError(
            f"init.checkpoint {path} was trained on another class list "
            f"({len(ckpt.class_names)} classes) than {manifest.name} ({manifest.num_classes} "
            "classes): a stage-2 run must use the dataset its stage-1 run was trained on."
        )
    fp = ckpt.meta.get("dataset_fingerprint")
    if fp != manifest.fingerprint:
        raise UserError(
            f"init.checkpoint {path} was trained on another prepared dataset (fingerprint "
            f"{(fp or 'none')[:12]}, this one {manifest.fingerprint[:12]}): a stage-2 run must "
            "use the dataset its stage-1 run was trained on."
        )
    mine, theirs = cfg.model, ckpt.config.model
    differ = [
        f"model.{k}={getattr(theirs, k)}"
        for k in (
            "name",
            "cosine_classifier",
            "width",
            "resnet_width",
            "etf_classifier",
            "etf_feature_bn",
            "tuning",
            "tuning_dim",
        )
        if getattr(mine, k) != getattr(theirs, k)
    ]
    if differ:
        raise UserError(
            f"init.checkpoint {path} holds a different model; add --set {' '.join(differ)} "
            "so stage 2 builds the model it was trained with."
        )
    if ckpt.config.stage2.mode == "lws":
        raise UserError(f"init.checkpoint {path} is an LWS run; start stage 2 from stage 1.")
    return ckpt


def prepare_stage2(
    model: nn.Module, cfg: TrainConfig, manifest: Manifest, load: bool = True
) -> nn.Module:
    """Init weights (when `load`; a resumed run loads its own), classifier reset, frozen
    backbone and LWS head, as the config says. Returns the model (its head may be new)."""
    if cfg.init.checkpoint is not None and load:
        ckpt = load_init(cfg.init.checkpoint, manifest, cfg)
        try:
            restore_weights(model, ckpt)
        except RuntimeError as exc:
            raise UserError(
                f"init.checkpoint {cfg.init.checkpoint} does not fit the model "
                f"({str(exc).splitlines()[0]})."
            ) from None
    if cfg.init.reset_classifier:
        reset_classifier(model)
    if cfg.stage2.frozen_backbone:
        freeze_backbone(model, cfg.stage2.train_bn)
    return apply_structure(model, cfg)


def check_stage2_start(cfg: TrainConfig, manifest: Manifest) -> None:
    """Before a run folder is created: a stage-2 recipe needs its init checkpoint, and that
    checkpoint must belong to this dataset."""
    if cfg.stage2.mode != "none" and cfg.init.checkpoint is None:
        raise UserError(
            f"'{cfg.name}' is a stage-2 recipe (stage2.mode={cfg.stage2.mode}): pass the "
            "stage-1 weights with --init RUN/checkpoints/last.safetensors."
        )
    model = cfg.model
    if (
        cfg.stage2.freeze == "backbone"
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
        load_init(cfg.init.checkpoint, manifest, cfg)
