"""Long-tailed class-count profiles and the LDAM-DRW selection of which images to keep.

The CIFAR-LT numbers published in the long-tailed literature come from LDAM-DRW's
`IMBALANCECIFAR`, so `exp`/`step` counts use its float arithmetic and `select_long_tailed`
reproduces its images for the same seed; anything else would make results incomparable.
"""

from __future__ import annotations

import math

import numpy as np

from lwrcli.errors import UserError, did_you_mean

PROFILES = ("exp", "step", "pareto")


def check_imbalance_factor(imbalance_factor: float) -> None:
    """IF is n_max / n_min >= 1; LDAM-DRW's own flag is the inverse, hence the hint."""
    if not imbalance_factor >= 1:  # `not >=` also catches NaN
        hint = ""
        if 0 < imbalance_factor < 1:
            hint = f" Did you mean {1 / imbalance_factor:g}?"
        raise UserError(
            f"--imbalance-factor must be >= 1: it is the ratio of the largest to the smallest "
            f"class (n_max / n_min, e.g. 100), got {imbalance_factor:g}.{hint}"
        )


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise UserError(
            f"Unknown profile '{profile}'.{did_you_mean(profile, PROFILES)} "
            f"Valid profiles: {', '.join(PROFILES)}."
        )


def long_tailed_counts(
    n_max: int, num_classes: int, imbalance_factor: float, profile: str
) -> list[int]:
    """Train images per class id, class 0 the head, for C = num_classes classes.

    exp:    n_c = int(n_max * (1/IF) ** (c / (C - 1)))   (LDAM-DRW's formula and float order)
    step:   the first C // 2 classes n_max, the rest int(n_max * (1/IF))   (LDAM-DRW's step)
    pareto: n_c = round(n_max * (c + 1) ** -a) with a = ln(IF) / ln(C): a power law (Zipf /
            Pareto) over the class rank, from n_max at rank 1 down to n_max / IF at rank C,
            the shape of ImageNet-LT's Pareto sampling; at least 1 image per class.
    """
    check_imbalance_factor(imbalance_factor)
    check_profile(profile)
    if num_classes < 1:
        raise UserError(f"A dataset needs at least one class, got {num_classes}.")
    if n_max < 1:
        raise UserError(f"The head class needs at least one image, got n_max={n_max}.")
    if num_classes == 1:
        return [int(n_max)]
    imb = 1.0 / imbalance_factor  # LDAM-DRW's imb_factor; keeping it keeps its rounding
    if profile == "exp":
        return [int(n_max * (imb ** (c / (num_classes - 1.0)))) for c in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [int(n_max)] * half + [int(n_max * imb)] * (num_classes - half)
    a = math.log(imbalance_factor) / math.log(num_classes)
    return [max(1, round(n_max * (c + 1) ** (-a))) for c in range(num_classes)]


def select_long_tailed(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """Indices (K,) int64 into the source train set, as LDAM-DRW's gen_imbalanced_data picks them.

    numpy's global generator is seeded with `seed` (LDAM-DRW uses the global one, so the same
    seed only gives the same images through it); for each class in sorted label order its
    indices are shuffled and the first n_c kept, concatenated in class order. The caller's
    global numpy state is restored afterwards.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) != len(counts):
        raise UserError(
            f"The source train set has {len(classes)} classes but the profile has "
            f"{len(counts)} class counts."
        )
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        picked = []
        for the_class, n in zip(classes, counts):
            idx = np.where(labels == the_class)[0]
            np.random.shuffle(idx)
            if n > len(idx):
                raise UserError(
                    f"Class {the_class} has {len(idx)} train images but the profile asks for {n}."
                )
            picked.append(idx[:n])
    finally:
        np.random.set_state(saved)
    return np.concatenate(picked).astype(np.int64)
