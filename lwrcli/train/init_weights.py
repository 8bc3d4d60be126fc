"""A run's starting weights from another run (`init:` section, `--init CKPT`): the checkpoint
checked against the dataset and the model, loaded, and the classifier re-initialised when
asked (cRT). Stage-2 methods then freeze what they freeze (lwrcli.methods.stage2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lwrcli.checkpoint.files import Checkpoint, load_checkpoint
from lwrcli.checkpoint.frozen_base import restore_weights
from lwrcli.config import TrainConfig
from lwrcli.data.manifest import Manifest
from lwrcli.errors import UserError
from lwrcli.models.heads import CosineLinear, get_classifier, set_head

# Model settings a stage-2 run must share with the run it starts from.
SAME_MODEL = ("name", "head", "variant", "width", "resnet_width", "tuning", "tuning_dim")
# ... except the cosine head's scale, a temperature stored in no weight: stage 2 may pick its
# own (LDAM stage 1 at scale 1, cRT with cross-entropy at 30).
FREE = ("model.head.scale",)


def flat_settings(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_settings(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


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
    mine = flat_settings(cfg.model.model_dump(mode="json"), "model")
    theirs = flat_settings(ckpt.config.model.model_dump(mode="json"), "model")
    differ = [
        f"{k}={theirs.get(k)}"
        for k in sorted(set(mine) | set(theirs))
        if k.split(".")[1] in SAME_MODEL and k not in FREE and mine.get(k) != theirs.get(k)
    ]
    if differ:
        raise UserError(
            f"init.checkpoint {path} holds a different model; add --set {' '.join(differ)} "
            "so stage 2 builds the model it was trained with."
        )
    return ckpt


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


def start_weights(
    model: nn.Module, cfg: TrainConfig, manifest: Manifest, load: bool = True
) -> nn.Module:
    """Init weights (when `load`; a resumed run loads its own) and the classifier reset."""
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
    return model


def check_start(cfg: TrainConfig, manifest: Manifest) -> None:
    """Before a run folder is created: what each method needs at the start (a stage-2 recipe
    its stage-1 checkpoint), and the init checkpoint belongs to this dataset and model."""
    for method in cfg.methods():
        method.check_start(cfg, manifest)
    if cfg.init.checkpoint is not None:
        load_init(cfg.init.checkpoint, manifest, cfg)
