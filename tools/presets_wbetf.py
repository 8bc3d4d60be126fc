"""Two relatives of LWR that act on the classifier's geometry: weight balancing (MaxNorm) and
the fixed simplex-ETF head with its dot-regression loss.

Weight balancing (Alshammari et al., CVPR 2022; ShadeAlsha/LTR-weight-balancing, its
demo1_first-stage-training.py and demo2_second-stage-training.py):
- stage 1 (`-wb-stage1`): CE with a large, tuned weight decay, 5e-3; SGD lr 0.01 momentum 0.9,
  batch 64, cosine to 0 over 320 epochs. The authors use their ResNet-34 encoder; these recipes
  keep the CIFAR ResNet-32 of every other CIFAR preset here, so rows compare on one backbone.
- stage 2 (`-wb`): the stage-1 classifier (not re-initialised) fine-tuned on the frozen
  backbone for 10 epochs, SGD lr 0.01 momentum 0.9, weight decay 0.1, cosine, batch 64, with
  the class-balanced loss (effective number, beta 0.9999) and MaxNorm on the rows: radius
  n_min + 0.1 (n_max - n_min) of the stage-1 row norms (`max_norm: {mode: relative}`, as their
  MaxNorm_via_PGD sets it; the bias is not projected). Differences, all ours: the
  class-balanced loss is the weighted softmax CE (`reweight: cb`), where their code (a port of
  vandit15's CB_loss) takes a weighted binary cross-entropy of the softmax probabilities;
  MaxNorm projects after every step, where their demo projects once per epoch; the backbone's
  BatchNorm statistics stay frozen in stage 2 (their demo leaves the whole net in train mode).
- `-lwr`: LWR on stage 2 (`-wb-lwr`) turns the rows of the classifier that MaxNorm caps, the
  stage where WB shapes the classifier; `-wb-stage1-lwr` adds it to stage 1 as well, where the
  LWR paper uses it (during representation learning). Stage 2 fine-tunes stage 1's classifier
  (no reset), so stage 1's geometry carries over: compare `-wb-stage1-lwr` -> `-wb-lwr` (both
  stages), `-wb-stage1` -> `-wb-lwr` (stage 2 only) and `-wb-stage1` -> `-wb` (neither).

Fixed ETF classifier (Yang et al., NeurIPS 2022; NeuralCollapseApplications/ImbalancedLearning,
config/cifar{10,100}/Res_cifar*_imb*_ETF_DR.yaml, train.py, methods.py): ResNet-32 with
first-stage width 32 for CIFAR-100 (its `resnet32_fe_c100`: 128-d features hold the 100-class
simplex) and 16 for CIFAR-10, the head fixed at a simplex ETF after a BatchNorm1d and L2
normalisation, the dot-regression loss, SGD lr 0.1 momentum 0.9, weight decay 2e-4, batch 128,
200 epochs, 5 warm-up epochs, lr x0.1 from epoch 160 and x0.01 from 180, mixup with alpha 1
(their configs; dot regression on mixed targets is their lambda l(y_a) + (1 - lambda) l(y_b),
which the soft form of `dr` equals). The synthetic quick preset trains without mixup.

Paper numbers (`reference`): weight balancing's own CIFAR-100-LT numbers, read in a text
conversion of Alshammari et al. (CVPR 2022, arXiv 2203.14197) held in the search index:
Table 2 (top-1 %, IF 100 / 50 / 10) rows "WD" (stage 1: 46.08 / 52.71 / 66.03) and
"+ WD & Max" (stage 2: 53.35 / 57.71 / 68.67), with Table 1's many / medium / few at IF 100
(76.94 / 44.28 / 12.17 and 72.60 / 51.86 / 32.63). The paper's CIFAR backbone is a ResNet-34;
these presets train ResNet-32 like every other CIFAR preset. No CIFAR-10-LT numbers (the paper
has none) and no ETF numbers (the ETF paper's tables could not be read here).
"""

from __future__ import annotations

from typing import Any

# The paper's top-1 (%) per preset, once checked against its tables (see the module docstring).
WB_ETF_PAPER: dict[str, dict[str, float]] = {
    "cifar100-lt-ir100-wb-stage1": {"all": 46.08, "many": 76.94, "medium": 44.28, "few": 12.17},
    "cifar100-lt-ir50-wb-stage1": {"all": 52.71},
    "cifar100-lt-ir10-wb-stage1": {"all": 66.03},
    "cifar100-lt-ir100-wb": {"all": 53.35, "many": 72.60, "medium": 51.86, "few": 32.63},
    "cifar100-lt-ir50-wb": {"all": 57.71},
    "cifar100-lt-ir10-wb": {"all": 68.67},
}

IMBALANCES = (100, 50, 10)
VARIANTS = ("cifar100", "cifar10")
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
CIFAR_DATA = {"crop_padding": 4, "flip": True, "mean": CIFAR_MEAN, "std": CIFAR_STD}
COSINE = {"kind": "cosine", "warmup_epochs": 0, "milestones": [], "factors": [], "min_lr": 0.0}


def wb_stage1(variant: str, ir: int, lwr: bool, lwr_block: Any) -> dict[str, Any]:
    """Weight balancing, stage 1: CE with weight decay 5e-3, 320 epochs (the authors' demo)."""
    return {
        "description": f"{variant.upper()}-LT IF {ir}, ResNet-32, weight balancing stage 1: CE "
        "with weight decay 5e-3" + (" + LWR" if lwr else "") + "; then the -wb stage-2 preset",
        "dataset": variant,
        "epochs": 320,
        "batch_size": 64,
        "model": {"name": "resnet32"},
        "loss": {"name": "ce", "reweight": "none"},
        "lwr": lwr_block(lwr, variant),
        "optim": {"lr": 0.01, "base_batch_size": 64, "momentum": 0.9, "weight_decay": 5e-3},
        "schedule": COSINE,
        "data": CIFAR_DATA,
    }


def wb_stage2(variant: str, ir: int, lwr: bool, lwr_block: Any) -> dict[str, Any]:
    """Weight balancing, stage 2: the stage-1 classifier fine-tuned on the frozen backbone with
    the class-balanced loss, weight decay 0.1 and MaxNorm (relative radius 0.1)."""
    return {
        "description": f"{variant.upper()}-LT IF {ir}, weight balancing stage 2: class-balanced "
        "CE, weight decay 0.1, MaxNorm (relative 0.1) on the frozen stage-1 backbone"
        + (" + LWR on the classifier" if lwr else "")
        + "; pass --init STAGE1_RUN/checkpoints/last.safetensors",
        "dataset": variant,
        "epochs": 10,
        "batch_size": 64,
        "model": {"name": "resnet32"},
        "loss": {"name": "ce", "reweight": "cb", "beta": 0.9999},
        "lwr": lwr_block(lwr, variant),
        "optim": {
            "lr": 0.01,
            "base_batch_size": 64,
            "momentum": 0.9,
            "weight_decay": 0.1,
        },
        "max_norm": {"radius": 0.1, "mode": "relative"},
        "schedule": COSINE,
        "data": CIFAR_DATA,
        "init": {"checkpoint": None, "reset_classifier": False},
        "stage2": {"mode": "none", "freeze": "backbone", "cache_features": False},
    }


def etf(variant: str, ir: int, lwr_block: Any) -> dict[str, Any]:
    """The fixed simplex-ETF head with dot regression (no LWR: its rows never move)."""
    width = 32 if variant == "cifar100" else 16
    return {
        "description": f"{variant.upper()}-LT IF {ir}, ResNet-32 (width {width}), fixed "
        "simplex-ETF classifier + dot-regression loss, mixup (alpha 1)",
        "dataset": variant,
        "epochs": 200,
        "batch_size": 128,
        "model": {"name": "resnet32", "resnet_width": width, "head": {"name": "etf"}},
        "loss": {"name": "dr", "reweight": "none"},
        "lwr": lwr_block(False, variant),
        "optim": {"lr": 0.1, "base_batch_size": 128, "momentum": 0.9, "weight_decay": 2e-4},
        "schedule": {
            "kind": "multistep",
            "warmup_epochs": 5,
            "milestones": [160, 180],
            "factors": [0.1, 0.01],
        },
        "data": CIFAR_DATA,
        "mixing": {"mixup_alpha": 1.0},
    }


def synthetic_relatives(synthetic: Any) -> dict[str, dict[str, Any]]:
    """Quick versions on the embedded synthetic data (small CNN, the quick-start recipe):
    stage 1 with weight decay 5e-3, stage 2 with the WB settings, and the ETF head + DR."""
    out: dict[str, dict[str, Any]] = {}
    for lwr in (False, True):
        suffix = "-lwr" if lwr else ""
        one = synthetic(lwr)
        one["description"] = (
            "SYNTHETIC quick start, weight balancing stage 1: CE with weight decay 5e-3"
            + (" + LWR" if lwr else "")
        )
        one["loss"] = {"name": "ce"}
        one["optim"] = {**one["optim"], "weight_decay": 5e-3}
        out[f"synthetic-lt-wb-stage1{suffix}"] = one
        two = synthetic(lwr)
        two.update(
            {
                "description": "SYNTHETIC quick start, weight balancing stage 2: class-balanced "
                "CE, weight decay 0.1, MaxNorm (relative 0.1)"
                + (" + LWR on the classifier" if lwr else "")
                + "; pass --init STAGE1_RUN/checkpoints/last.safetensors",
                "epochs": 5,
                "loss": {"name": "ce", "reweight": "cb", "beta": 0.9999},
                "init": {"checkpoint": None, "reset_classifier": False},
                "stage2": {"mode": "none", "freeze": "backbone", "cache_features": False},
            }
        )
        two["optim"] = {**two["optim"], "weight_decay": 0.1}
        two["max_norm"] = {"radius": 0.1, "mode": "relative"}
        out[f"synthetic-lt-wb{suffix}"] = two
    etf_body = synthetic(False)
    etf_body["description"] = "SYNTHETIC quick start: fixed simplex-ETF classifier + dot regression"
    etf_body["loss"] = {"name": "dr"}
    etf_body["model"] = {**etf_body["model"], "head": {"name": "etf"}}
    out["synthetic-lt-etf"] = etf_body
    return out


def wbetf_presets(lwr_block: Any, synthetic: Any) -> dict[str, dict[str, Any]]:
    """Every weight-balancing and ETF preset by name, references attached where checked."""
    out: dict[str, dict[str, Any]] = synthetic_relatives(synthetic)
    for variant in VARIANTS:
        for ir in IMBALANCES:
            base = f"{variant}-lt-ir{ir}"
            for lwr in (False, True):
                suffix = "-lwr" if lwr else ""
                out[f"{base}-wb-stage1{suffix}"] = wb_stage1(variant, ir, lwr, lwr_block)
                out[f"{base}-wb{suffix}"] = wb_stage2(variant, ir, lwr, lwr_block)
            out[f"{base}-etf"] = etf(variant, ir, lwr_block)
    for name, ref in WB_ETF_PAPER.items():
        out[name]["reference"] = ref
    return out
