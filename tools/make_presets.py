"""Write presets/*.yaml: one recipe per row of the paper's tables.

The recipes live here once, in code, so the 250 YAML files cannot drift apart; the YAML files
are what users read and what `lwr train --preset` loads. Each file holds only what differs from
the defaults, or from the preset it names as `_base_` (`X-lwr` derives from `X`), so a new
config field with a default changes no file. Run `python tools/make_presets.py` after changing
a recipe (`--out DIR` writes elsewhere); a test checks the files match this script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from presets_augpolicy import augpolicy_presets  # noqa: E402
from presets_bbn import bbn_presets  # noqa: E402
from presets_contrastive import contrastive_presets  # noqa: E402
from presets_experts import experts_presets  # noqa: E402
from presets_lift import lift_presets  # noqa: E402
from presets_losses import loss_presets  # noqa: E402
from presets_mixing import mislas_presets  # noqa: E402
from presets_wbetf import wbetf_presets  # noqa: E402

from lwrcli.config import TrainConfig  # noqa: E402
from lwrcli.config.files import (  # noqa: E402
    BASE_KEY,
    difference,
    merge,
    recipe_to_yaml,
)
from lwrcli.models.families import model_data_defaults  # noqa: E402
from lwrcli.train.lwr import lambda_for_classes  # noqa: E402

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# LWR as the paper's best setting: theta 0.4, projection on, lambda(t) linear over the run.
# lambda_max is not given in the paper's summary: it follows the class count C by the measured
# rule of lwrcli.train.lwr.lambda_for_classes (docs/lwr.md, "How strong is LWR?"), so every
# dataset sees about CIFAR-100's share of the gradient (lambda 10 there).
NUM_CLASSES = {
    "cifar10": 10,
    "cifar100": 100,
    "imagenet": 1000,
    "inat": 8142,
    "places": 365,
    "synthetic": 20,
}
LWR_LAMBDA: dict[str, float | str] = {f: lambda_for_classes(c) for f, c in NUM_CLASSES.items()}
LWR_LAMBDA["folder"] = "auto"  # users' own data: C is known only at start-up

# The paper's top-1 (%) for the rows it reports: all / many / medium / few.
PAPER: dict[str, dict[str, float]] = {
    "cifar100-lt-ir100-ce": {"all": 38.6, "many": 65.3, "medium": 37.6, "few": 8.7},
    "cifar100-lt-ir50-ce": {"all": 44.0},
    "cifar100-lt-ir10-ce": {"all": 56.4},
    "cifar100-lt-ir100-focal": {"all": 41.9, "many": 68.7, "medium": 41.3, "few": 10.9},
    "cifar100-lt-ir50-focal": {"all": 48.2},
    "cifar100-lt-ir10-focal": {"all": 59.8},
    "cifar100-lt-ir100-la": {"all": 46.5, "many": 63.6, "medium": 47.1, "few": 24.4},
    "cifar100-lt-ir100-ldam-drw": {"all": 46.6, "many": 64.4, "medium": 48.5, "few": 22.8},
    "cifar100-lt-ir50-ldam-drw": {"all": 51.2},
    "cifar100-lt-ir10-ldam-drw": {"all": 59.6},
    "cifar100-lt-ir100-bs": {"all": 46.3, "many": 63.9, "medium": 46.7, "few": 25.0},
    "cifar100-lt-ir100-bs-lwr": {"all": 50.7, "many": 66.6, "medium": 50.0, "few": 32.2},
    "cifar100-lt-ir50-bs": {"all": 51.2},
    "cifar100-lt-ir50-bs-lwr": {"all": 54.3},
    "cifar100-lt-ir10-bs": {"all": 61.5},
    "cifar100-lt-ir10-bs-lwr": {"all": 63.6},
    "imagenet-lt-ce-drw": {"all": 47.6, "many": 57.6, "medium": 44.9, "few": 28.0},
    "imagenet-lt-ce-drw-lwr": {"all": 50.4, "many": 60.4, "medium": 47.7, "few": 30.0},
    "imagenet-lt-bs": {"all": 48.7, "many": 60.5, "medium": 46.2, "few": 24.0},
    "imagenet-lt-bs-lwr": {"all": 51.5, "many": 62.6, "medium": 49.2, "few": 30.7},
    "imagenet-lt-focal": {"all": 38.0, "many": 56.3, "medium": 31.0, "few": 11.2},
    "imagenet-lt-focal-lwr": {"all": 41.0, "many": 58.6, "medium": 34.1, "few": 13.7},
    "imagenet-lt-la": {"all": 48.0, "many": 58.5, "medium": 44.4, "few": 29.1},
    "imagenet-lt-la-lwr": {"all": 50.1, "many": 60.4, "medium": 46.9, "few": 31.5},
    "imagenet-lt-ldam-drw": {"all": 49.8, "many": 60.4, "medium": 46.9, "few": 30.7},
}


# Large-image epochs take many minutes even on 8 GPUs: a kill must cost minutes, not an
# epoch. CIFAR and synthetic epochs are seconds on a GPU: epoch-end checkpoints suffice.
LARGE_CHECKPOINT_MINUTES = 30.0


LINEAR = {"name": "linear"}
COSINE_HEAD = {"name": "cosine"}


def loss_block(
    loss: str, drw_epoch: int, focal_gamma: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(loss section, model.head) for a loss name of the tables (LDAM needs a cosine head)."""
    base: dict[str, Any] = {"reweight": "none", "drw_epoch": drw_epoch, "beta": 0.9999}
    if loss == "ce":
        return {"name": "ce", **base}, LINEAR
    if loss == "ce-drw":
        return {"name": "ce", **base, "reweight": "drw"}, LINEAR
    if loss == "focal":
        return {"name": "focal", **base, "gamma": focal_gamma}, LINEAR
    if loss == "ldam-drw":
        return {"name": "ldam", **base, "reweight": "drw", "max_m": 0.5, "s": 30.0}, COSINE_HEAD
    if loss == "bs":
        return {"name": "bs", **base}, LINEAR
    if loss == "la":
        return {"name": "la", **base, "tau": 1.0}, LINEAR
    raise ValueError(loss)


def lwr_block(enabled: bool, family: str) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "lambda_max": LWR_LAMBDA[family],
        "theta": 0.4,
        "power": 1,
        "proj": True,
        "block_size": 1024,
        "schedule": {"kind": "linear", "start": 0.0, "end": None},
    }


def pretrained_model(name: str, head: dict[str, Any]) -> dict[str, Any]:
    """A backbone fine-tuned from a local weights file the user passes (never downloaded)."""
    return {
        "name": name,
        "head": head,
        "pretrained": None,
        "pretrained_required": True,
    }


def named_weights_model(name: str, weights: str, head: dict[str, Any]) -> dict[str, Any]:
    """A backbone fine-tuned from published weights, fetched once into the hub cache (a local
    file instead: --set model.weights=null --set model.pretrained=PATH)."""
    return {
        "name": name,
        "head": head,
        "weights": weights,
        "pretrained": None,
        "pretrained_required": True,
    }


def model_data(name: str) -> dict[str, Any]:
    """Input size and normalisation the backbone was trained with (lwrcli.models.families)."""
    d = model_data_defaults(name)
    assert d is not None, name
    return {k: d[k] for k in ("image_size", "resize", "mean", "std")}


def cifar(variant: str, ir: int, loss: str, lwr: bool) -> dict[str, Any]:
    """The LDAM-DRW recipe: ResNet-32, 200 epochs, batch 128, lr 0.1 with 5 warm-up epochs,
    x0.01 from 0-based epoch 160 and x0.0001 from 180, DRW at 160, crop(32, pad 4) + flip."""
    loss_cfg, head = loss_block(loss, drw_epoch=160, focal_gamma=1.0)
    paper_loss = {
        "ce-drw": "CE-DRW",
        "ldam-drw": "LDAM-DRW",
        "bs": "Balanced Softmax",
        "la": "Logit Adjustment",
        "ce": "cross-entropy",
        "focal": "focal (gamma 1)",
    }
    return {
        "description": f"{variant.upper()}-LT IF {ir}, ResNet-32, {paper_loss[loss]}"
        + (" + LWR (theta 0.4, proj, linear lambda(t))" if lwr else "")
        + "; LDAM-DRW recipe",
        "dataset": variant,
        "epochs": 200,
        "batch_size": 128,
        "model": {"name": "resnet32", "head": head},
        "loss": loss_cfg,
        "lwr": lwr_block(lwr, variant),
        "optim": {"lr": 0.1, "base_batch_size": 128, "momentum": 0.9, "weight_decay": 2e-4},
        "schedule": {
            "kind": "multistep",
            "warmup_epochs": 5,
            "milestones": [160, 180],
            "factors": [0.01, 0.0001],
        },
        "data": {"crop_padding": 4, "flip": True, "mean": CIFAR_MEAN, "std": CIFAR_STD},
    }


def large(dataset: str, loss: str, lwr: bool) -> dict[str, Any]:
    """ImageNet-LT / iNaturalist 2018: ResNet-50 from scratch, 90 epochs, batch 512, lr 0.2,
    cosine to 0 (amp/channels_last/compile auto: bf16 + channels_last on a GPU). Places-LT:
    ImageNet-pretrained ResNet-152, 30 epochs."""
    family = {"imagenet-lt": "imagenet", "inat2018": "inat", "places-lt": "places"}[dataset]
    epochs = 30 if dataset == "places-lt" else 90
    loss_cfg, head = loss_block(loss, drw_epoch=epochs * 2 // 3, focal_gamma=2.0)
    model: dict[str, Any] = {"name": "resnet50", "head": head}
    optim = {
        "lr": 0.2,
        "base_batch_size": 512,
        "momentum": 0.9,
        "weight_decay": 1e-4 if dataset == "inat2018" else 5e-4,
    }
    batch = 512
    if dataset == "places-lt":
        # Kang et al. fine-tune torchvision's ImageNet ResNet-152 (the original weights, V1).
        model = named_weights_model("torchvision:resnet152", "IMAGENET1K_V1", head)
        optim = {"lr": 0.05, "base_batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4}
        batch = 256
    return {
        "description": f"{dataset} {model['name']}, {loss}"
        + (" + LWR" if lwr else "")
        + (
            "; from torchvision's ImageNet ResNet-152 (IMAGENET1K_V1, fetched once)"
            if dataset == "places-lt"
            else ""
        ),
        "dataset": dataset,
        "epochs": epochs,
        "batch_size": batch,
        "eval_batch_size": 256,
        "save_every": 10,
        "checkpoint_every_minutes": LARGE_CHECKPOINT_MINUTES,
        "model": model,
        "loss": loss_cfg,
        "lwr": lwr_block(lwr, family),
        "optim": optim,
        "schedule": {
            "kind": "cosine",
            "warmup_epochs": 0,
            "milestones": [],
            "factors": [],
            "min_lr": 0.0,
        },
        "data": {
            "image_size": 224,
            "resize": 256,
            "color_jitter": 0.4,
            "num_workers": 8,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "select_on": "val",
        },
    }


COSINE_SCHEDULE = {"kind": "cosine", "milestones": [], "factors": [], "min_lr": 0.0}


def folder_finetune(loss: str, lwr: bool) -> dict[str, Any]:
    """Your own ImageFolder data (prepare-data folder): ConvNeXt-Tiny from a local ImageNet
    file, 30 epochs of AdamW (lr 1e-4 at batch 64, new head at 10x), cosine after 1 warm-up
    epoch, no weight decay on norms and biases."""
    name = "torchvision:convnext_tiny"
    loss_cfg, head = loss_block(loss, drw_epoch=20, focal_gamma=2.0)
    return {
        "description": f"Fine-tune ConvNeXt-T on a prepared folder, {loss}"
        + (" + LWR" if lwr else "")
        + "; set model.pretrained to a local torchvision convnext_tiny file",
        "dataset": "folder",
        "epochs": 30,
        "batch_size": 64,
        "eval_batch_size": 128,
        "save_every": 10,
        "checkpoint_every_minutes": LARGE_CHECKPOINT_MINUTES,
        "model": pretrained_model(name, head),
        "loss": loss_cfg,
        "lwr": lwr_block(lwr, "folder"),
        "optim": {
            "name": "adamw",
            "lr": 1e-4,
            "base_batch_size": 64,
            "weight_decay": 0.05,
            "head_lr_mult": 10.0,
        },
        "schedule": {**COSINE_SCHEDULE, "warmup_epochs": 1},
        "data": {**model_data(name), "color_jitter": 0.4, "num_workers": 8, "select_on": "val"},
    }


def folder_small(loss: str, lwr: bool) -> dict[str, Any]:
    """Your own small images (prepare-data folder stores them as arrays: --image-size N, or
    one square size <= 64 px): the CIFAR recipe (ResNet-32 from scratch, 200 epochs, batch
    128, lr 0.1 with 5 warm-up epochs, x0.01 at 160, x0.0001 at 180, pad-crop + flip).
    image_size/resize 32/36 apply only if the dataset was stored as lists."""
    body = cifar("folder", 0, loss, lwr)
    body["description"] = (
        f"Your own small images (prepare-data folder), ResNet-32, {loss}"
        + (" + LWR" if lwr else "")
        + "; CIFAR recipe"
    )
    body["dataset"] = "folder"
    body["lwr"] = lwr_block(lwr, "folder")
    body["data"] = {**body["data"], "image_size": 32, "resize": 36}
    return body


def folder_large(loss: str, lwr: bool) -> dict[str, Any]:
    """Your own 224-px images (prepare-data folder, stored as lists): ResNet-50 from scratch,
    the ImageNet-LT recipe at batch 256 (lr 0.1, cosine, 90 epochs)."""
    body = large("imagenet-lt", loss, lwr)
    body["description"] = (
        f"Your own large images (prepare-data folder), ResNet-50 from scratch, {loss}"
        + (" + LWR" if lwr else "")
        + "; ImageNet-LT recipe at batch 256"
    )
    body["dataset"] = "folder"
    body["batch_size"] = 256
    body["optim"] = {**body["optim"], "lr": 0.1, "base_batch_size": 256}
    body["lwr"] = lwr_block(lwr, "folder")
    body["data"] = {**body["data"], "num_workers": 4}
    return body


def imagenet_vit(lwr: bool) -> dict[str, Any]:
    """ImageNet-LT, ViT-B/16 from local weights with the MAE fine-tuning recipe (He et al.
    2022): AdamW lr 5e-4 at batch 256, layer decay 0.65, weight decay 0.05, 5 warm-up epochs,
    100 epochs. The weights must not have seen ImageNet-1k labels (torchvision's have: they
    were trained on the balanced full set); use e.g. self-supervised weights."""
    name = "torchvision:vit_b_16"
    loss_cfg, _ = loss_block("bs", drw_epoch=66, focal_gamma=2.0)
    return {
        "description": "imagenet-lt ViT-B/16 fine-tuned, bs"
        + (" + LWR" if lwr else "")
        + "; set model.pretrained to a local vit_b_16 file not trained on ImageNet-1k labels",
        "dataset": "imagenet-lt",
        "epochs": 100,
        "batch_size": 256,
        "eval_batch_size": 256,
        "save_every": 10,
        "checkpoint_every_minutes": LARGE_CHECKPOINT_MINUTES,
        "model": pretrained_model(name, LINEAR),
        "loss": loss_cfg,
        "lwr": lwr_block(lwr, "imagenet"),
        "optim": {
            "name": "adamw",
            "lr": 5e-4,
            "base_batch_size": 256,
            "weight_decay": 0.05,
            "layer_decay": 0.65,
            "clip_grad_norm": None,
        },
        "schedule": {**COSINE_SCHEDULE, "warmup_epochs": 5},
        "data": {**model_data(name), "color_jitter": 0.4, "num_workers": 8, "select_on": "val"},
    }


def synthetic(lwr: bool) -> dict[str, Any]:
    """About a minute on a laptop CPU: small CNN, Balanced Softmax, 20 synthetic classes."""
    return {
        "description": "Quick start on the embedded SYNTHETIC data: small CNN, Balanced Softmax"
        + (" + LWR" if lwr else ""),
        "dataset": "synthetic",
        "epochs": 15,
        "batch_size": 64,
        "eval_every": 5,
        "log_every": 20,
        "device": "auto",
        "model": {"name": "small_cnn", "width": 32},
        "loss": {"name": "bs"},
        "lwr": lwr_block(lwr, "synthetic"),
        "optim": {"lr": 0.05, "base_batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"kind": "cosine", "warmup_epochs": 1, "milestones": [], "factors": []},
        "data": {
            "crop_padding": 2,
            "flip": True,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
    }


# Decoupled training (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
# Recognition", ICLR 2020): top-1 % all / many / medium / few of cRT, LWS and tau-norm on a
# CE-trained (instance-sampled) stage 1. ImageNet-LT: ResNeXt-50 (the stage-1 recipes here
# use ResNet-50); iNaturalist 2018: ResNet-50, 90 epochs; Places-LT: ResNet-152.
DECOUPLING: dict[str, dict[str, float]] = {
    "imagenet-lt-crt": {"all": 49.6, "many": 61.8, "medium": 46.2, "few": 27.4},
    "imagenet-lt-lws": {"all": 49.9, "many": 60.2, "medium": 47.2, "few": 30.3},
    "imagenet-lt-tau-norm": {"all": 49.4, "many": 59.1, "medium": 46.9, "few": 30.7},
    "inat2018-crt": {"all": 65.2, "many": 69.0, "medium": 66.0, "few": 63.2},
    "inat2018-lws": {"all": 65.9, "many": 65.0, "medium": 66.3, "few": 65.5},
    "inat2018-tau-norm": {"all": 65.6, "many": 65.6, "medium": 65.3, "few": 65.9},
    "places-lt-crt": {"all": 36.7, "many": 42.0, "medium": 37.6, "few": 24.9},
    "places-lt-lws": {"all": 37.6, "many": 40.6, "medium": 39.1, "few": 28.6},
    "places-lt-tau-norm": {"all": 37.9, "many": 37.8, "medium": 40.7, "few": 31.8},
}
STAGE2_EPOCHS = {"crt": 10, "lws": 5}


def stage2(stage1: dict[str, Any], dataset: str, mode: str, lwr: bool) -> dict[str, Any]:
    """cRT / LWS after the CE stage-1 recipe `stage1` of the same dataset (its model, input
    pipeline and augmentation). The reference cRT recipe (Kang et al.'s ImageNet-LT config):
    class-aware sampling with 4 images per class pick, CE, SGD lr 0.2 at batch 512 (momentum
    0.9, weight decay 5e-4), cosine to 0, 10 epochs; LWS the same for 5 epochs. CIFAR and
    synthetic, which the paper does not train, use that recipe with the lr scaled linearly to
    their batch size (0.05 at 128, 0.025 at 64): our choice, not a published one."""
    family = {"imagenet-lt": "imagenet", "inat2018": "inat", "places-lt": "places"}.get(
        dataset, dataset
    )
    body = {k: v for k, v in stage1.items() if k not in ("save_every", "reference")}
    what = {"crt": "cRT (classifier re-trained)", "lws": "LWS (per-class scales)"}[mode]
    if isinstance(body["model"], dict) and body["model"].get("pretrained_required"):
        # --init gives the weights: nothing to fetch or pass
        body["model"] = {**body["model"], "pretrained_required": False, "weights": None}
    body.update(
        {
            "description": f"{dataset} stage 2: {what} on the frozen CE backbone"
            + (" + LWR on the classifier" if lwr else "")
            + (" (inert in LWS: the classifier is frozen)" if lwr and mode == "lws" else "")
            + "; pass --init STAGE1_RUN/checkpoints/last.safetensors",
            "epochs": STAGE2_EPOCHS[mode],
            "loss": {"name": "ce", "reweight": "none"},
            "lwr": lwr_block(lwr, family),
            "optim": {
                "lr": 0.2,
                "base_batch_size": 512,
                "lr_scaling": "linear",
                "momentum": 0.9,
                "weight_decay": 5e-4,
            },
            "schedule": {**COSINE_SCHEDULE, "warmup_epochs": 0},
            "data": {**body["data"], "sampler": "class_balanced", "num_samples_cls": 4},
            "init": {"checkpoint": None, "reset_classifier": mode == "crt"},
            "stage2": {"mode": mode, "freeze": "backbone", "cache_features": False},
        }
    )
    return body


def decoupled_presets() -> dict[str, dict[str, Any]]:
    """Stage-1 CE recipes the decoupled rows start from where the tables lack one, and the
    stage-2 presets `{dataset}-{crt,lws}[-lwr]`."""
    out: dict[str, dict[str, Any]] = {}
    for lwr in (False, True):
        suffix = "-lwr" if lwr else ""
        out[f"imagenet-lt-ce{suffix}"] = large("imagenet-lt", "ce", lwr)
        out[f"inat2018-ce{suffix}"] = large("inat2018", "ce", lwr)
        ce = synthetic(lwr)
        ce["loss"] = {"name": "ce"}
        ce["description"] = ce["description"].replace("Balanced Softmax", "cross-entropy")
        out[f"synthetic-lt-ce{suffix}"] = ce
    stage1 = {f"cifar100-lt-ir{ir}": cifar("cifar100", ir, "ce", False) for ir in (100, 50, 10)}
    stage1.update({d: large(d, "ce", False) for d in ("imagenet-lt", "inat2018", "places-lt")})
    stage1["synthetic-lt"] = out["synthetic-lt-ce"]
    for name, body in stage1.items():
        dataset = body["dataset"]
        for mode in ("crt", "lws"):
            for lwr in (False, True):
                preset = f"{name}-{mode}" + ("-lwr" if lwr else "")
                out[preset] = stage2(body, dataset, mode, lwr)
                if not lwr and preset in DECOUPLING:
                    out[preset]["reference"] = DECOUPLING[preset]
    return out


def all_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    cifar_losses = ["ce", "ce-drw", "focal", "ldam-drw", "bs", "la"]
    for variant, irs in (("cifar100", (100, 50, 10)), ("cifar10", (100,))):
        for ir in irs:
            for loss in cifar_losses:
                for lwr in (False, True):
                    name = f"{variant}-lt-ir{ir}-{loss}" + ("-lwr" if lwr else "")
                    presets[name] = cifar(variant, ir, loss, lwr)
    for loss in ["ce-drw", "bs", "focal", "la", "ldam-drw"]:
        for lwr in (False, True):
            presets[f"imagenet-lt-{loss}" + ("-lwr" if lwr else "")] = large(
                "imagenet-lt", loss, lwr
            )
    for loss in ["ce", "bs", "la"]:
        for lwr in (False, True):
            presets[f"places-lt-{loss}" + ("-lwr" if lwr else "")] = large("places-lt", loss, lwr)
    for loss in ["bs", "la"]:
        for lwr in (False, True):
            name = f"folder-finetune-{loss}" + ("-lwr" if lwr else "")
            presets[name] = folder_finetune(loss, lwr)
    for loss in ["ce", "bs", "la"]:
        for lwr in (False, True):
            suffix = f"{loss}" + ("-lwr" if lwr else "")
            presets[f"folder-{suffix}"] = folder_small(loss, lwr)
            presets[f"folder-large-{suffix}"] = folder_large(loss, lwr)
    for lwr in (False, True):
        presets["imagenet-lt-vit-b16-bs" + ("-lwr" if lwr else "")] = imagenet_vit(lwr)
    for lwr in (False, True):
        presets["inat2018-bs" + ("-lwr" if lwr else "")] = large("inat2018", "bs", lwr)
        presets["synthetic-lt-bs" + ("-lwr" if lwr else "")] = synthetic(lwr)
    presets.update(decoupled_presets())
    presets.update(lift_presets(lwr_block, model_data, LARGE_CHECKPOINT_MINUTES))
    presets.update(wbetf_presets(lwr_block, synthetic))
    presets.update(mislas_presets(cifar, large, lwr_block))
    presets.update(loss_presets(cifar, large))
    presets.update(augpolicy_presets(cifar))
    presets.update(bbn_presets(lwr_block))
    presets.update(contrastive_presets(lwr_block, LARGE_CHECKPOINT_MINUTES))
    presets.update(experts_presets(lwr_block))
    for name, body in presets.items():
        body["name"] = name
        if name in PAPER:
            body["reference"] = PAPER[name]
    return presets


# Which preset each one names as `_base_`: `X-lwr` is the recipe `X` plus LWR, so it derives
# from `X` where that preset exists; every other preset derives from the defaults. One level at
# most: a value is set by the file itself, by its `_base_`, or it is the default.
def base_of(name: str, names: Collection[str]) -> str | None:
    plain = name.removesuffix("-lwr")
    return plain if plain != name and plain in names else None


# The data settings a model brings (lwrcli.train.resolve.with_model_data_defaults fills those a
# config leaves unset from the model): a preset of such a model sets them all, even where they
# equal the config's defaults, so the model's (resnet50: resize 232) never replace them.
MODEL_DATA_KEYS = ("image_size", "resize", "mean", "std")


def defaults() -> dict[str, Any]:
    """The complete default config (what a recipe without `_base_` is merged onto)."""
    return TrainConfig().model_dump(mode="json")


def complete(body: dict[str, Any]) -> dict[str, Any]:
    """A recipe's complete validated config, defaults filled in."""
    return TrainConfig.model_validate(body).model_dump(mode="json")


def _pin_model_data(
    recipe: dict[str, Any], inherited: dict[str, Any], full: dict[str, Any]
) -> None:
    """Write the model's data settings explicitly where neither the recipe nor its base does."""
    if model_data_defaults(full["model"]["name"]) is None:
        return
    given = {**inherited.get("data", {}), **recipe.get("data", {})}
    missing = {k: full["data"][k] for k in MODEL_DATA_KEYS if k not in given}
    if missing:
        data = {**recipe.get("data", {}), **missing}
        recipe["data"] = {k: data[k] for k in full["data"] if k in data}  # the schema's order


def recipes(presets: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """name -> the recipe presets/NAME.yaml holds: `_base_` (if any), name, description, then
    every key whose value differs from the base's complete config (or from the defaults), in
    the config's order, `reference` last. Each is checked to give back the complete config."""
    presets = all_presets() if presets is None else presets
    full = {name: complete(body) for name, body in presets.items()}
    empty = defaults()
    chains: dict[str, dict[str, Any]] = {}  # name -> its recipe merged along its _base_ chain
    out: dict[str, dict[str, Any]] = {}
    order = sorted(presets, key=lambda n: base_of(n, presets) is not None)  # bases first
    for name in order:
        base = base_of(name, presets)
        inherited = chains[base] if base else {}
        recipe = difference(full[name], full[base] if base else empty)
        recipe.update(name=name, description=full[name]["description"])
        _pin_model_data(recipe, inherited, full[name])
        keys = ["name", "description", *(k for k in full[name] if k != "reference"), "reference"]
        recipe = ({BASE_KEY: base} if base else {}) | {k: recipe[k] for k in keys if k in recipe}
        chains[name] = merge(inherited, {k: v for k, v in recipe.items() if k != BASE_KEY})
        assert complete(chains[name]) == full[name], f"{name}: the recipe loses a value"
        out[name] = recipe
    return {name: out[name] for name in presets}


def render(name: str, recipe: dict[str, Any]) -> str:
    """A recipe as YAML under a header comment (lists in flow style)."""
    header = (
        f"# {name}: {recipe['description']}\n"
        "# Generated by tools/make_presets.py; see README. Only what differs from "
        + ("_base_" if BASE_KEY in recipe else "the defaults")
        + f":\n# `lwr presets show {name}` prints the full config.\n"
    )
    return header + recipe_to_yaml(recipe)


def rendered() -> dict[str, str]:
    """name -> the text of presets/NAME.yaml."""
    return {name: render(name, recipe) for name, recipe in recipes().items()}


def main(out: Path = ROOT / "presets") -> None:
    out.mkdir(parents=True, exist_ok=True)
    texts = rendered()
    for old in out.glob("*.yaml"):
        if old.stem not in texts:
            old.unlink()
    for name, text in texts.items():
        (out / f"{name}.yaml").write_text(text)
    print(f"wrote {len(texts)} presets to {out}")


def readme_table() -> str:
    """The README's presets table: every preset with the paper's numbers where it gives them."""
    rows = [
        "| preset | model | loss | LWR | epochs | paper top-1 all / many / med / few |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    from lwrcli.studies.presets import loss_label, lwr_label, model_label

    for name, body in sorted(all_presets().items()):
        cfg = TrainConfig.model_validate(body)
        ref = cfg.reference
        paper = (
            " / ".join(
                f"{ref[k]:.1f}" if k in ref else "–" for k in ("all", "many", "medium", "few")
            )
            if ref
            else ""
        )
        rows.append(
            f"| `{name}` | {model_label(cfg)} | {loss_label(cfg)} | {lwr_label(cfg)} | "
            f"{cfg.epochs} | {paper} |"
        )
    return "\n".join(rows)


DOCS_MARKER = "<!-- generated by tools/make_presets.py --docs-page: do not edit below -->"


def write_docs_page(page: Path = ROOT / "docs" / "presets.md") -> None:
    """Replace everything after the marker line of docs/presets.md with the presets table."""
    text = page.read_text()
    if DOCS_MARKER not in text:
        raise SystemExit(f"{page} has no line {DOCS_MARKER!r}")
    head = text.split(DOCS_MARKER)[0]
    page.write_text(f"{head}{DOCS_MARKER}\n\n{readme_table()}\n")
    print(f"wrote the presets table to {page}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the shipped presets (presets/*.yaml).")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--out", type=Path, default=ROOT / "presets", help="folder to write")
    what.add_argument("--readme-table", action="store_true", help="print the presets table")
    what.add_argument("--docs-page", action="store_true", help="update docs/presets.md")
    args = parser.parse_args()
    if args.readme_table:
        print(readme_table())
    elif args.docs_page:
        write_docs_page()
    else:
        main(args.out)
