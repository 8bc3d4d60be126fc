"""MiSLAS (Zhong et al., CVPR 2021, "Improving Calibration for Long-Tailed Recognition"), the
two-stage recipe of its code (github.com/dvlab-research/MiSLAS), with and without LWR.

Stage 1 (train_stage1.py, config/*/*_stage1_mixup.yaml): CE with mixup on instance-sampled
batches. CIFAR: ResNet-32, 200 epochs, batch 128, SGD lr 0.1 (5 linear warm-up epochs, x0.1
from 0-based epoch 160, x0.01 from 180), weight decay 2e-4, mixup alpha 1. ImageNet-LT:
ResNet-50, 180 epochs, batch 256, lr 0.1 cosine, weight decay 5e-4, mixup alpha 0.2.

Stage 2 (train_stage2.py, config/*/*_stage2_mislas.yaml): 10 epochs on class-balanced batches
(its ClassAwareSampler, one image per class pick), the stage-1 classifier trained further (not
re-initialised) with label-aware smoothing (concave, ε_1 head / ε_K tail per dataset), the
backbone frozen; "shift_bn" lets the backbone's BatchNorm running statistics follow the
re-sampled batches (stage2.train_bn). The classifier's lr is lr_factor x 0.1, cosine to 0 over
the 10 epochs, SGD momentum 0.9, the stage-1 weight decay.
Left out here: MiSLAS also learns per-class logit scales (its LearnableWeightScaling, lr 0.1)
jointly with the classifier; lwr's LWS mode trains scales alone, so these presets train the
classifier only. Its cosine lr steps per epoch; ours per step.
"""

from __future__ import annotations

from typing import Any

# Stage-2 per dataset: (ε_1 head, ε_K tail, shift_bn, lr_factor), from the stage-2 configs.
STAGE2: dict[str, tuple[float, float, bool, float]] = {
    "cifar100-lt-ir100": (0.4, 0.1, True, 0.2),
    "cifar100-lt-ir50": (0.3, 0.0, True, 0.1),
    "cifar100-lt-ir10": (0.2, 0.0, True, 0.1),
    "cifar10-lt-ir100": (0.3, 0.0, False, 0.5),
    "cifar10-lt-ir50": (0.2, 0.0, False, 0.2),
    "cifar10-lt-ir10": (0.1, 0.0, False, 0.2),
    "imagenet-lt": (0.3, 0.0, True, 0.05),
}

# MiSLAS's stage-2 top-1 (%). Sources, checked 2026-11-30:
#  (a) the authors' README (github.com/dvlab-research/MiSLAS, "Results and Models", Stage-2
#      tables): CIFAR-10-LT IF 10/50/100 90.0/85.7/82.5, CIFAR-100-LT IF 10/50/100
#      63.2/52.3/47.0, ImageNet-LT ResNet-50 52.7;
#  (b) the paper's results as listed at paperswithcode.com/paper/improving-calibration-for-long-
#      tailed-1 (CIFAR-100-LT error 36.8/47.7/53.0, CIFAR-10-LT error 10.0 (IF 10) and 17.9
#      (IF 100), ImageNet-LT 52.7).
# Kept: the numbers (a) and (b) agree on. CIFAR-10-LT IF 100 is left out ((a) 82.5, (b) 82.1),
# and so is CIFAR-10-LT IF 50 (85.7 in (a) only): the paper's own table text could not be read
# here. Many/medium/few are not in either source and are left out too.
MISLAS_PAPER: dict[str, dict[str, float]] = {
    "cifar100-lt-ir100-mislas-stage2": {"all": 47.0},
    "cifar100-lt-ir50-mislas-stage2": {"all": 52.3},
    "cifar100-lt-ir10-mislas-stage2": {"all": 63.2},
    "cifar10-lt-ir10-mislas-stage2": {"all": 90.0},
    "imagenet-lt-mislas-stage2": {"all": 52.7},
}


def stage1(base: dict[str, Any], dataset: str) -> dict[str, Any]:
    """MiSLAS stage 1 from the CE recipe `base` of the same dataset."""
    body = {k: v for k, v in base.items() if k != "reference"}
    if dataset == "imagenet-lt":
        body.update(
            {
                "epochs": 180,
                "batch_size": 256,
                "optim": {**body["optim"], "lr": 0.1, "base_batch_size": 256},
                "mixing": {"mixup_alpha": 0.2},
            }
        )
        body["optim"]["weight_decay"] = 5e-4
    else:
        body["schedule"] = {**body["schedule"], "factors": [0.1, 0.01]}
        body["mixing"] = {"mixup_alpha": 1.0}
    body["description"] = (
        f"{dataset} MiSLAS stage 1: {body['model']['name']}, CE + mixup "
        f"(alpha {body['mixing']['mixup_alpha']:g}); MiSLAS's stage-1 recipe"
    )
    return body


def stage2(s1: dict[str, Any], dataset: str, lwr: bool, lwr_block: Any) -> dict[str, Any]:
    """MiSLAS stage 2 after `s1`: label-aware smoothing, class-balanced batches, frozen
    backbone (BN statistics shifted where MiSLAS does), the classifier trained further."""
    head, tail, shift_bn, lr_factor = STAGE2[dataset]
    family = "imagenet" if dataset == "imagenet-lt" else dataset.split("-")[0]
    body = {k: v for k, v in s1.items() if k not in ("save_every", "reference", "mixing")}
    body.update(
        {
            "description": f"{dataset} MiSLAS stage 2: label-aware smoothing ({head:g} head, "
            f"{tail:g} tail, concave), class-balanced batches, frozen backbone"
            + (" with shifted BN statistics" if shift_bn else "")
            + (" + LWR on the classifier" if lwr else "")
            + "; pass --init STAGE1_RUN/checkpoints/last.safetensors",
            "epochs": 10,
            "loss": {"name": "ce", "reweight": "none"},
            "label_smoothing": {"epsilon": head, "tail": tail, "shape": "concave"},
            "lwr": lwr_block(lwr, family),
            "optim": {**body["optim"], "lr": round(0.1 * lr_factor, 6)},
            "schedule": {
                "kind": "cosine",
                "warmup_epochs": 0,
                "milestones": [],
                "factors": [],
                "min_lr": 0.0,
            },
            "data": {**body["data"], "sampler": "class_balanced", "num_samples_cls": 1},
            "init": {"checkpoint": None, "reset_classifier": False},
            "stage2": {"mode": "none", "freeze": "backbone", "train_bn": shift_bn},
        }
    )
    return body


def mislas_presets(cifar: Any, large: Any, lwr_block: Any) -> dict[str, dict[str, Any]]:
    """`{dataset}-mislas-stage1`, `{dataset}-mislas-stage2[-lwr]`, references attached.
    `cifar(variant, ir, loss, lwr)` and `large(dataset, loss, lwr)` are make_presets' CE
    recipes (passed in: this file is imported by make_presets)."""
    out: dict[str, dict[str, Any]] = {}
    for dataset in STAGE2:
        if dataset == "imagenet-lt":
            base = large("imagenet-lt", "ce", False)
        else:
            variant, ir = dataset.split("-lt-ir")
            base = cifar(variant, int(ir), "ce", False)
        s1 = stage1(base, dataset)
        out[f"{dataset}-mislas-stage1"] = s1
        for lwr in (False, True):
            out[f"{dataset}-mislas-stage2" + ("-lwr" if lwr else "")] = stage2(
                s1, dataset, lwr, lwr_block
            )
    for name, ref in MISLAS_PAPER.items():
        out[name]["reference"] = ref
    return out
