"""Long-tailed class-count profiles and the LDAM-DRW selection of which images to keep."""

from __future__ import annotations

import numpy as np

from lwrcli.errors import UserError

PROFILES = ("exp", "step", "pareto")


def check_imbalance_factor(imbalance_factor: float) -> None:
    if not imbalance_factor >= 1:  # also catches NaN
        hint = ""
        if 0 < imbalance_factor < 1:
            hint = f" Did you mean {1 / imbalance_factor:g}?"
        raise UserError(
            f"--imbalance-factor must be >= 1: it is the ratio of the largest to the smallest "
            f"class (n_max / n_min, e.g. 100), got {imbalance_factor:g}.{hint}"
        )


def long_tailed_counts(
    n_max: int, num_classes: int, imbalance_factor: float, profile: str
) -> list[int]:
    """Images per class, class 0 the head.

    exp:    n_c = int(n_max · (1/IF)^(c/(C−1)))  (the LDAM-DRW formula, same float order)
    step:   the first half of the classes n_max, the rest int(n_max / IF)
    pareto: n_c = int(n_max · (c+1)^(−a)) with a = log(IF)/log(C), a power law over class rank
            from n_max down to n_max / IF (the shape of ImageNet-LT's Pareto sampling)
    """
    check_imbalance_factor(imbalance_factor)
    if profile not in PROFILES:
        raise UserError(f"Unknown profile '{profile}'; choose one of {', '.join(PROFILES)}.")
    if num_classes < 1:
        raise UserError("A dataset needs at least one class.")
    if num_classes == 1:
        return [int(n_max)]
    if profile == "exp":
        imb = 1.0 / imbalance_factor
        return [int(n_max * (imb ** (c / (num_classes - 1.0)))) for c in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [int(n_max)] * half + [int(n_max / imbalance_factor)] * (num_classes - half)
    a = np.log(imbalance_factor) / np.log(num_classes)
    return [max(1, int(n_max * (c + 1) ** (-a))) for c in range(num_classes)]


def select_long_tailed(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """Indices into the source train set, exactly as LDAM-DRW's gen_imbalanced_data picks them.

    numpy's global generator is seeded with `seed`; for each class in label order its indices
    are shuffled and the first n_c kept. The caller's global numpy state is restored after.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) != len(counts):
        raise UserError(
            f"The source has {len(classes)} classes but the profile has {len(counts)} counts."
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
                    f"Class {the_class} has {len(idx)} images but the profile asks for {n}."
                )
            picked.append(idx[:n])
    finally:
        np.random.set_state(saved)
    return np.concatenate(picked).astype(np.int64)
