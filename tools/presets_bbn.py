"""BBN recipes (Zhou et al., CVPR 2020, Megvii-Nanjing/BBN), with and without LWR.

The model: `model.variant: {name: bbn}` on ResNet-32 (lwrcli.models.bbn: the last residual block of
stage 3 duplicated into the conventional and re-balancing branches, one FC layer over the
concatenated 2 x 64 features), the instance sampler for the conventional branch and the
reversed sampler for the re-balancing one (lwrcli.data.paired), cross-entropy on the
cumulative-learning mixture α CE(z, y_c) + (1 - α) CE(z, y_r) with α = 1 - (T / T_max)^2.

The training recipe follows BBN's CIFAR configs as we recall them (configs/cifar10.yaml,
cifar100.yaml: batch 128, 200 epochs, SGD lr 0.1 momentum 0.9 weight decay 2e-4, 5 warm-up
epochs, lr x0.01 at epochs 120 and 160, random crop 32 pad 4 + flip); those files could not be
read in the stored copies here, so treat the schedule as unverified (see the notes).

Paper numbers: BBN reports top-1 *error* rates on long-tailed CIFAR-10/100 (its Table 2) and
iNaturalist; it reports no ImageNet-LT result, so there is no ImageNet-LT preset. The table
could not be read through the stored pages (only the openings of the paper's pages are
stored: https://ar5iv.labs.arxiv.org / the SPIQA tex copy of arXiv 1912.02413 show the
introduction, not Table 2), so no `reference` is attached: a number we could not check
against the paper is left out rather than guessed.
"""

from __future__ import annotations

from typing import Any

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]

# Verified paper top-1 (%) per preset name: none could be checked here (module docstring).
# CIFAR-100-LT, ResNet-32: BBN's numbers as Alshammari et al. (CVPR 2022) Table 2 lists them
# ("BBN [88]", IF 100 / 50 / 10), read in a text conversion of that paper: quoted, not read in
# BBN's own table. CIFAR-10-LT: none could be read.
BBN_PAPER: dict[str, dict[str, float]] = {
    "cifar100-lt-ir100-bbn": {"all": 42.56},
    "cifar100-lt-ir50-bbn": {"all": 47.02},
    "cifar100-lt-ir10-bbn": {"all": 59.12},
}


def bbn_cifar(variant: str, ir: int, lwr: bool, lwr_block: Any) -> dict[str, Any]:
    """One preset: BBN on {variant}-LT at imbalance factor `ir` (the IF is the prepared
    dataset's: `lwr prepare-data cifar100 --imbalance-factor IR`), ± LWR on the (C, 128) head."""
    return {
        "description": f"{variant.upper()}-LT IF {ir}, ResNet-32 BBN (two branches, uniform + "
        "reversed samplers, cumulative learning), CE"
        + (" + LWR (theta 0.4, proj, linear lambda(t))" if lwr else "")
        + "; BBN recipe",
        "dataset": variant,
        "epochs": 200,
        "batch_size": 128,
        "model": {"name": "resnet32", "head": {"name": "linear"}, "variant": {"name": "bbn"}},
        "loss": {"name": "ce", "reweight": "none"},
        "lwr": lwr_block(lwr, variant),
        "optim": {"lr": 0.1, "base_batch_size": 128, "momentum": 0.9, "weight_decay": 2e-4},
        "schedule": {
            "kind": "multistep",
            "warmup_epochs": 5,
            "milestones": [120, 160],
            "factors": [0.01, 0.0001],
        },
        "data": {
            "crop_padding": 4,
            "flip": True,
            "mean": CIFAR_MEAN,
            "std": CIFAR_STD,
            "sampler": "instance",
        },
    }


def bbn_presets(lwr_block: Any) -> dict[str, dict[str, Any]]:
    """Every BBN preset by name: CIFAR-100-LT and CIFAR-10-LT at IF 100/50/10, ± LWR."""
    out: dict[str, dict[str, Any]] = {}
    for variant in ("cifar100", "cifar10"):
        for ir in (100, 50, 10):
            for lwr in (False, True):
                name = f"{variant}-lt-ir{ir}-bbn" + ("-lwr" if lwr else "")
                out[name] = bbn_cifar(variant, ir, lwr, lwr_block)
    for name, ref in BBN_PAPER.items():
        out[name]["reference"] = ref
    return out
