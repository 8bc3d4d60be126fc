"""Foundation-model recipes: LIFT (Shi et al., ICML 2024, shijxcs/LIFT) on CLIP, with and
without LWR, and the fine-tuning rows LIFT compares (head only, full fine-tuning).

LIFT's recipe (its configs/model/clip_vit_b16_peft.yaml and trainer.py): CLIP ViT-B/16 (OpenAI
weights), AdaptFormer in every block (bottleneck by the C / (2 blocks) power-of-two rule), a
cosine head of scale 25 on the features before the image projection, initialised from the
text embedding of "a photo of a {class}." (mapped through the projection), logit-adjusted
loss, SGD lr 0.01 momentum 0.9 weight decay 5e-4, batch 128, cosine schedule over 10 epochs
(20 for iNaturalist), RandomResizedCrop + flip; CIFAR images upsampled to 224. Its headline
numbers use the test-time ensemble (five crops of the image enlarged by 24 px).
"""

from __future__ import annotations

from typing import Any

# Top-1 (%) LIFT reports, with the test-time ensemble (its main-results script evaluates each
# trained model with `tte True`). Checked against two public summaries of the paper's tables;
# many/medium/few, the rows without TTE and iNaturalist could not be checked here and are left
# out rather than guessed (docs/foundation-models.md).
LIFT_PAPER: dict[str, dict[str, float]] = {
    "imagenet-lt-clip-vit-b16-lift": {"all": 78.3},
    "places-lt-clip-vit-b16-lift": {"all": 52.2},
    "cifar100-lt-ir100-clip-vit-b16-lift": {"all": 81.7},
    "cifar100-lt-ir50-clip-vit-b16-lift": {"all": 83.1},
    "cifar100-lt-ir10-clip-vit-b16-lift": {"all": 84.9},
    "imagenet-lt-clip-vit-l14-lift": {"all": 82.9},
    "places-lt-clip-vit-l14-lift": {"all": 53.7},
}

# dataset name -> (the presets' `dataset`, LWR λ family, epochs, CIFAR imbalance or None)
LIFT_DATASETS: dict[str, tuple[str, str, int, int | None]] = {
    "imagenet-lt": ("imagenet-lt", "imagenet", 10, None),
    "places-lt": ("places-lt", "places", 10, None),
    "inat2018": ("inat2018", "inat", 20, None),
    "cifar100-lt-ir100": ("cifar100", "cifar100", 10, 100),
    "cifar100-lt-ir50": ("cifar100", "cifar100", 10, 50),
    "cifar100-lt-ir10": ("cifar100", "cifar100", 10, 10),
}
ARCHS = {"vit-b16": "clip:ViT-B-16", "vit-l14": "clip:ViT-L-14"}
TUNING_ROWS = {"lift": "adaptformer", "head": "head", "full": "full"}


def lift(
    dataset: str,
    row: str,
    lwr: bool,
    arch: str,
    lwr_block: Any,
    model_data: Any,
    checkpoint_minutes: float,
) -> dict[str, Any]:
    """One preset: LIFT's recipe with `row`'s tuning (adaptformer, head, full), ± LWR with
    θ = init (each class pair repelled only once it is more similar than its text embeddings
    were: the fixed θ = 0.4 of random heads sits below most text-embedding cosines)."""
    kind, family, epochs, imbalance = LIFT_DATASETS[dataset]
    name = ARCHS[arch]
    tuning = TUNING_ROWS[row]
    data: dict[str, Any] = {**model_data(name), "select_on": "none"}
    data["resize"] = data["image_size"] * 8 // 7  # LIFT's plain evaluation: 256 -> crop 224
    if imbalance is not None:  # 32-px arrays upsampled to the model's 224 on the device
        data.update({"crop_padding": 4, "flip": True, "array_resize": data["image_size"]})
    else:
        data.update({"num_workers": 8, "color_jitter": 0.0})
    lwr_cfg = lwr_block(lwr, family)
    if lwr:
        lwr_cfg["theta"] = "init"
    what = {"lift": "LIFT (AdaptFormer)", "head": "head only", "full": "full fine-tuning"}[row]
    body: dict[str, Any] = {
        "description": f"{dataset} CLIP {name[5:]} {what}, LA, cosine head from text"
        + (" + LWR (theta init)" if lwr else "")
        + "; LIFT recipe, test-time ensemble at the end",
        "dataset": kind,
        "epochs": epochs,
        "batch_size": 128,
        "eval_batch_size": 256,
        # LIFT scores the last epoch once, with the test-time ensemble.
        "eval_every": 0,
        "eval_tte": True,
        "model": {
            "name": name,
            "weights": "openai",
            "head": {"name": "cosine", "scale": 25.0},
            "head_init": "text",
            "text_templates": "single",
            "clip_projection": False,
            "tuning": tuning,
        },
        "loss": {"name": "la", "tau": 1.0},
        "lwr": lwr_cfg,
        "optim": {
            "name": "sgd",
            "lr": 0.01,
            "base_batch_size": 128,
            "momentum": 0.9,
            "weight_decay": 5e-4,
        },
        "schedule": {"kind": "cosine", "milestones": [], "factors": [], "min_lr": 0.0},
        "data": data,
    }
    if imbalance is None:
        body["checkpoint_every_minutes"] = checkpoint_minutes
    return body


def lift_presets(
    lwr_block: Any, model_data: Any, checkpoint_minutes: float
) -> dict[str, dict[str, Any]]:
    """Every LIFT-family preset by name, references attached."""
    out: dict[str, dict[str, Any]] = {}
    for dataset in LIFT_DATASETS:
        for row in TUNING_ROWS:
            for lwr in (False, True):
                name = f"{dataset}-clip-vit-b16-{row}" + ("-lwr" if lwr else "")
                out[name] = lift(
                    dataset, row, lwr, "vit-b16", lwr_block, model_data, checkpoint_minutes
                )
    for dataset in ("imagenet-lt", "places-lt"):
        for lwr in (False, True):
            name = f"{dataset}-clip-vit-l14-lift" + ("-lwr" if lwr else "")
            out[name] = lift(
                dataset, "lift", lwr, "vit-l14", lwr_block, model_data, checkpoint_minutes
            )
    for name, ref in LIFT_PAPER.items():
        out[name]["reference"] = ref
    return out
