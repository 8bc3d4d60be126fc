"""Multi-expert recipes: RIDE, SADE and BalPoE (docs/multi-expert.md), each with and without
LWR on every expert's classifier.

What was read where (the stored copies of the authors' repositories):
- RIDE (frank-xwang/RIDE-LongTailRecognition): configs/config_imbalance_cifar100_ride.json
  (ResNet-32, 3 reduced experts, NormedLinear, batch 128, SGD lr 0.1 Nesterov, weight decay
  5e-4, 200 epochs, 5 warm-up epochs, lr x0.01 from epoch 160 and x0.0001 from 180 (gamma
  0.01), DRW from 160, diversity factor -0.2) and config_imagenet_lt_resnext50_ride.json
  (ResNeXt-50, 3 reduced experts, batch 256, lr 0.1, weight decay 2e-4, 100 epochs, 5 warm-up
  epochs, x0.1 from 60 and x0.01 from 80, DRW from 80, reweight_factor 0.02); train.py
  (CustomLR: gamma from step1, gamma^2 from step2, warm-up (1 + epoch) / 5);
  data_loader/imagenet_lt_data_loaders.py (RandomResizedCrop 224, flip, colour jitter 0.4).
- SADE (Vanint/SADE-AgnosticLT): configs/config_cifar100_ir100_sade.json (3 reduced experts,
  tau 2, batch 128, lr 0.1, weight decay 5e-4, 200 epochs, warm-up 5, x0.1 from 160 and x0.01
  from 180) and config_imagenet_lt_resnext50_sade.json (batch 64, lr 0.025, weight decay
  5e-4, 180 epochs, cosine to 0, no warm-up); test-time configs for TSA (lr 0.1 / 0.025).
- BalPoE (emasa/BalPoE-CalibratedLT): configs/mixup/standard_training/
  config_cifar100_ir100_bs-experts.json, config_cifar10_ir100_bs-experts.json and
  config_imagenet_lt_resnext50_bs-experts.json (3 full-width experts, NormedLinear; CIFAR as
  SADE's with tau_list [0, 1, 2] and mixup alpha 0.4 / 0.8; ImageNet-LT as SADE's with
  tau_list [0, 1.25, 2.5] and mixup alpha 0.3).
All three use the authors' NormedLinear times s = 30: a cosine head with scale 30 here. The
ImageNet-LT loaders of SADE and BalPoE were not read; they are forks of RIDE's, whose training
augmentation the ImageNet-LT presets use.

Reference top-1 (%): RIDE and SADE from the SADE-AgnosticLT README (its tables "CIFAR100-
Imbalance ratio 100 (ResNet-32)" and "ImageNet-LT (ResNeXt-50)", uniform test distribution).
BalPoE's README gives no numbers and its paper's tables could not be read here (only the
introduction of the stored copies): its references are left blank. No author reports RIDE or
SADE on CIFAR-10-LT in what was read, so only BalPoE (whose repository has the config) has a
CIFAR-10-LT preset.

LWR: θ 0.4, projection, linear λ(t), on every expert's classifier (R = the mean over the K
heads). λ_max follows `lambda_max: auto`'s rule with the methods' factor: K λ(C) where the
experts' losses are summed (RIDE, SADE), λ(C) where they are averaged (BalPoE).
"""

from __future__ import annotations

from typing import Any

from lwrcli.train.lwr import lambda_for_classes

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
EXPERTS = 3
CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet-lt": 1000}
# The SADE-AgnosticLT README's uniform-test top-1 (%), the table.
REFERENCE: dict[str, dict[str, float]] = {
    "cifar100-lt-ir100-ride": {"all": 48.0},
    "cifar100-lt-ir100-sade": {"all": 49.8},
    "imagenet-lt-ride": {"all": 56.3},
    "imagenet-lt-sade": {"all": 58.8},
}
NAMES = {
    "ride": "RIDE (3 reduced experts, LDAM-DRW + diversity)",
    "sade": "SADE (3 reduced experts: softmax, Balanced Softmax, inverse prior tau 2)",
    "balpoe": "BalPoE (3 experts, logit adjustment lambda = {taus}, mixup {alpha})",
}


def experts_lambda(method: str, dataset: str) -> float:
    """`lambda_max: auto` for this recipe: K λ(C) for summed expert losses, λ(C) for BalPoE."""
    factor = 1.0 if method == "balpoe" else float(EXPERTS)
    return float(f"{lambda_for_classes(CLASSES[dataset]) * factor:.2g}")


def _loss(method: str, dataset: str) -> dict[str, Any]:
    if method == "ride":
        large = dataset == "imagenet-lt"
        return {
            "name": "ride",
            "reweight": "drw",
            "drw_epoch": 80 if large else 160,
            "beta": 0.9999,
            "max_m": 0.5,
            "s": 30.0,
            "diversity_factor": -0.2,
            "diversity_temperature": 1.0,
            "reweight_factor": 0.02 if large else 0.05,
        }
    if method == "sade":
        return {"name": "sade", "tau": 2.0}
    return {
        "name": "balpoe",
        "taus": [0.0, 1.25, 2.5] if dataset == "imagenet-lt" else [0.0, 1.0, 2.0],
    }


MIXUP = {"cifar100": 0.4, "cifar10": 0.8, "imagenet-lt": 0.3}  # BalPoE's configs


def experts_recipe(method: str, dataset: str, lwr: bool, lwr_block: Any) -> dict[str, Any]:
    """One preset: `method` on CIFAR-100/10-LT IF 100 (ResNet-32) or ImageNet-LT
    (ResNeXt-50), ± LWR on the experts' classifiers."""
    family = "imagenet" if dataset == "imagenet-lt" else dataset
    loss = _loss(method, dataset)
    what = NAMES[method].format(
        taus=",".join(f"{t:g}" for t in loss.get("taus", [])), alpha=MIXUP[dataset]
    )
    lwr_cfg = {**lwr_block(lwr, family), "lambda_max": experts_lambda(method, dataset)}
    large = dataset == "imagenet-lt"
    body: dict[str, Any] = {
        "description": (
            f"ImageNet-LT, ResNeXt-50 {what}"
            if large
            else f"{dataset.upper()}-LT IF 100, ResNet-32 {what}"
        )
        + (" + LWR on every expert's classifier (theta 0.4, proj, linear lambda(t))" if lwr else "")
        + f"; {method.upper() if method != 'balpoe' else 'BalPoE'} authors' recipe",
        "dataset": dataset,
        "model": {
            "name": "resnext50_32x4d" if large else "resnet32",
            "head": {"name": "cosine", "scale": 30.0},
            "variant": {
                "name": "experts",
                "num_experts": EXPERTS,
                "reduce_width": method != "balpoe",
            },
        },
        "loss": loss,
        "lwr": lwr_cfg,
    }
    if method == "balpoe":
        body["mixing"] = {"mixup_alpha": MIXUP[dataset]}
    if not large:
        body.update(
            epochs=200,
            batch_size=128,
            optim={
                "lr": 0.1,
                "base_batch_size": 128,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 5e-4,
            },
            schedule={
                "kind": "multistep",
                "warmup_epochs": 5,
                "milestones": [160, 180],
                "factors": [0.01, 0.0001] if method == "ride" else [0.1, 0.01],
            },
            data={"crop_padding": 4, "flip": True, "mean": CIFAR_MEAN, "std": CIFAR_STD},
        )
        return body
    ride = method == "ride"
    body.update(
        epochs=100 if ride else 180,
        batch_size=256 if ride else 64,
        eval_batch_size=256,
        save_every=10,
        checkpoint_every_minutes=30.0,
        optim={
            "lr": 0.1 if ride else 0.025,
            "base_batch_size": 256 if ride else 64,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 2e-4 if ride else 5e-4,
        },
        schedule=(
            {
                "kind": "multistep",
                "warmup_epochs": 5,
                "milestones": [60, 80],
                "factors": [0.1, 0.01],
            }
            if ride
            else {
                "kind": "cosine",
                "warmup_epochs": 0,
                "milestones": [],
                "factors": [],
                "min_lr": 0.0,
            }
        ),
        data={
            "image_size": 224,
            "resize": 256,
            "color_jitter": 0.4,
            "num_workers": 8,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "select_on": "val",
        },
    )
    return body


def experts_presets(lwr_block: Any) -> dict[str, dict[str, Any]]:
    """Every multi-expert preset by name: `{cifar100-lt-ir100,imagenet-lt}-{ride,sade,balpoe}`
    and `cifar10-lt-ir100-balpoe`, each ± `-lwr`."""
    out: dict[str, dict[str, Any]] = {}
    rows = [(d, m) for d in ("cifar100", "imagenet-lt") for m in ("ride", "sade", "balpoe")]
    rows.append(("cifar10", "balpoe"))
    for dataset, method in rows:
        prefix = "imagenet-lt" if dataset == "imagenet-lt" else f"{dataset}-lt-ir100"
        for lwr in (False, True):
            name = f"{prefix}-{method}" + ("-lwr" if lwr else "")
            out[name] = experts_recipe(method, dataset, lwr, lwr_block)
    for name, ref in REFERENCE.items():
        out[name]["reference"] = ref
    return out
