"""Contrastive recipes (issue 25): PaCo, GPaCo and BCL on CIFAR-100-LT IF 100 and ImageNet-LT
(and BCL on CIFAR-10-LT IF 100, which its paper reports), each without and with LWR.

Where each setting comes from (docs/contrastive.md has the same table):

- PaCo / GPaCo, read in the authors' code (dvlab-research/Parametric-Contrastive-Learning):
  CIFAR-100-LT from LT/sh/CIFAR100_train_imb0.01.sh and GPaCo/LT/sh/LT/CIFAR100_train_imb0.01.sh
  (ResNet-32, 400 epochs, batch 128, lr 0.02 (PaCo) / 0.1 (GPaCo), weight decay 5e-4,
  α 0.02 / 0.01, β = γ = 1, temperature 0.05, queue 1024, projection 64 / 32) and the schedule
  of paco_cifar.py (10 warm-up epochs, x0.1 after epoch 320, x0.01 after 360); ImageNet-LT from
  LT/sh/ImageNetLT_train_R50.sh and GPaCo/LT/sh/LT/ImageNetLT_train_R50.sh (ResNet-50, 400
  epochs, batch 128, lr 0.02 / 0.04, α 0.05 / 0.045, temperature 0.2, timm's RandAugment
  rand-n2-m10: N 2 at M 30 on torchvision's scale) and paco_lt.py's defaults (queue 8192,
  projection 128, momentum 0.999, 10 warm-up epochs, cosine). The README asks for the lr
  scaled linearly with the batch: lr_scaling linear from 128.
- BCL, read in the authors' code (FlamieZhu/Balanced-Contrastive-Learning: README and main.py):
  ImageNet-LT ResNet-50, 90 epochs, batch 256, lr 0.1, cosine, weight decay 5e-4, cosine
  classifier (scale 30), temperature 0.07, loss weights 1 and 0.35, projection 1024,
  timm's RandAugment rand-n2-m10 (N 2, M 30 on torchvision's scale) on the classification
  view, three views. The repository has no CIFAR training script and the paper's CIFAR
  settings could not be read here: the CIFAR recipes are ours (the ResNet-32 recipe of lwr's
  other CIFAR presets, 200 epochs, batch 128, lr 0.1 with 5 warm-up epochs, cosine as BCL's
  code decays, weight decay 5e-4, projection 128, BCL's loss settings from main.py).

Augmentation: every view is drawn from the run's one augmentation (crop/flip and `augment`'s
policy: AutoAugment on CIFAR, RandAugment on ImageNet-LT), independently per view; the
authors give their views different pipelines (SimCLR-style colour jitter, grayscale and blur
for the contrastive views, Cutout on CIFAR), which lwr does not have.

Reference top-1 (%): ImageNet-LT ResNet-50 from the Parametric-Contrastive-Learning README
(PaCo 57.0, GPaCo 58.5). None for the CIFAR rows (that README lists none) or for BCL (its
README has no results table and the paper could not be read here): left blank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

REFERENCE: dict[str, dict[str, float]] = {
    "imagenet-lt-paco": {"all": 57.0},
    "imagenet-lt-gpaco": {"all": 58.5},
}

# The authors' loss settings per (method, dataset family).
PACO_LOSS: dict[tuple[str, str], dict[str, Any]] = {
    ("paco", "cifar"): {"alpha": 0.02, "temperature": 0.05, "queue": 1024, "dim": 64},
    ("gpaco", "cifar"): {"alpha": 0.01, "temperature": 0.05, "queue": 1024, "dim": 32},
    ("paco", "imagenet"): {"alpha": 0.05, "temperature": 0.2, "queue": 8192, "dim": 128},
    ("gpaco", "imagenet"): {"alpha": 0.045, "temperature": 0.2, "queue": 8192, "dim": 128},
}
PACO_LR = {("paco", "cifar"): 0.02, ("gpaco", "cifar"): 0.1}
PACO_LR.update({("paco", "imagenet"): 0.02, ("gpaco", "imagenet"): 0.04})


def paco_loss(method: str, family: str) -> dict[str, Any]:
    loss: dict[str, Any] = {
        "name": method,
        "reweight": "none",
        "centre_weight": 1.0,
        "gamma": 1.0,
        "mlp": "bn" if method == "paco" else "relu2",
        **PACO_LOSS[(method, family)],
    }
    if method == "paco":
        loss["momentum"] = 0.999
    return loss


def bcl_loss(dim: int) -> dict[str, Any]:
    return {
        "name": "bcl",
        "reweight": "none",
        "temperature": 0.07,
        "ce_weight": 1.0,
        "contrast_weight": 0.35,
        "tau": 1.0,
        "dim": dim,
        "mlp": "bn",
        "views": 3,
    }


def cifar_body(variant: str, method: str, lwr: bool, lwr_block: Any) -> dict[str, Any]:
    label = {"paco": "PaCo", "gpaco": "GPaCo", "bcl": "BCL"}[method]
    data = {
        "crop_padding": 4,
        "flip": True,
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "augment": "autoaugment",
    }
    body: dict[str, Any] = {
        "description": f"{variant.upper()}-LT IF 100, ResNet-32, {label}"
        + (" + LWR (theta 0.4, proj, linear lambda(t))" if lwr else "")
        + ("; authors' CIFAR recipe" if method != "bcl" else "; our CIFAR recipe"),
        "dataset": variant,
        "batch_size": 128,
        "model": {"name": "resnet32", "head": {"name": "linear"}},
        "lwr": lwr_block(lwr, variant),
        "data": data,
    }
    if method == "bcl":
        body.update(
            epochs=200,
            loss=bcl_loss(128),
            optim={"lr": 0.1, "base_batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4},
            schedule={
                "kind": "cosine",
                "warmup_epochs": 5,
                "milestones": [],
                "factors": [],
                "min_lr": 0.0,
            },
        )
        body["model"]["head"] = {"name": "cosine", "scale": 30.0}
        return body
    body.update(
        epochs=400,
        loss=paco_loss(method, "cifar"),
        optim={
            "lr": PACO_LR[(method, "cifar")],
            "base_batch_size": 128,
            "momentum": 0.9,
            "weight_decay": 5e-4,
        },
        schedule={
            "kind": "multistep",
            "warmup_epochs": 10,
            "milestones": [321, 361],
            "factors": [0.1, 0.01],
        },
    )
    return body


def imagenet_body(method: str, lwr: bool, lwr_block: Any, large_minutes: float) -> dict[str, Any]:
    label = {"paco": "PaCo", "gpaco": "GPaCo", "bcl": "BCL"}[method]
    body: dict[str, Any] = {
        "description": f"imagenet-lt resnet50, {label}"
        + (" + LWR" if lwr else "")
        + "; authors' ImageNet-LT recipe",
        "dataset": "imagenet-lt",
        "eval_batch_size": 256,
        "save_every": 10,
        "checkpoint_every_minutes": large_minutes,
        "lwr": lwr_block(lwr, "imagenet"),
        "data": {
            "image_size": 224,
            "resize": 256,
            "color_jitter": 0.4,
            "num_workers": 8,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "select_on": "val",
            "augment": "randaugment",
            "randaugment_ops": 2,
            # timm's rand-n2-m10 (the authors'): M 10 of timm's 0-10 scale is the strongest
            # bin, 30 of torchvision's 0-30 one.
            "randaugment_magnitude": 30,
        },
    }
    cosine = {"kind": "cosine", "milestones": [], "factors": [], "min_lr": 0.0}
    if method == "bcl":
        body.update(
            epochs=90,
            batch_size=256,
            model={"name": "resnet50", "head": {"name": "cosine", "scale": 30.0}},
            loss=bcl_loss(1024),
            optim={"lr": 0.1, "base_batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4},
            schedule={**cosine, "warmup_epochs": 0},
        )
        return body
    body.update(
        epochs=400,
        batch_size=128,
        model={"name": "resnet50", "head": {"name": "linear"}},
        loss=paco_loss(method, "imagenet"),
        optim={
            "lr": PACO_LR[(method, "imagenet")],
            "base_batch_size": 128,
            "lr_scaling": "linear",
            "momentum": 0.9,
            "weight_decay": 5e-4,
        },
        schedule={**cosine, "warmup_epochs": 10},
    )
    return body


def contrastive_presets(
    lwr_block: Callable[[bool, str], dict[str, Any]], large_minutes: float
) -> dict[str, dict[str, Any]]:
    """Every contrastive preset by name: `{cifar100-lt-ir100,imagenet-lt}-{paco,gpaco,bcl}`
    and `cifar10-lt-ir100-bcl`, each `[-lwr]`."""
    out: dict[str, dict[str, Any]] = {}
    for lwr in (False, True):
        suffix = "-lwr" if lwr else ""
        for method in ("paco", "gpaco", "bcl"):
            out[f"cifar100-lt-ir100-{method}{suffix}"] = cifar_body(
                "cifar100", method, lwr, lwr_block
            )
            out[f"imagenet-lt-{method}{suffix}"] = imagenet_body(
                method, lwr, lwr_block, large_minutes
            )
        out[f"cifar10-lt-ir100-bcl{suffix}"] = cifar_body("cifar10", "bcl", lwr, lwr_block)
    for name, ref in REFERENCE.items():
        out[name]["reference"] = ref
    return out
