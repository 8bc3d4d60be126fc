"""Augmentation-policy and EMA recipes: CIFAR-100-LT IF 100, Balanced Softmax + LWR (the
LDAM-DRW recipe of make_presets.cifar) with RandAugment (N 2, M 9) on the device pipeline,
without and with an EMA of the weights (decay 0.999 per step: a horizon of ~1,000 steps,
about 12 of the recipe's 85 steps-per-epoch epochs, with TF's warm-up so early evaluations
are of a trained average, not of the initial weights).

No `reference` numbers: neither the LWR paper nor the RandAugment / AutoAugment /
TrivialAugment papers report these combinations on CIFAR-100-LT, so there is nothing to
check against; the presets are for the relatives comparison (issue 19), measured here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


def augpolicy_presets(
    cifar: Callable[[str, int, str, bool], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    base = cifar("cifar100", 100, "bs", True)
    out: dict[str, dict[str, Any]] = {}
    for suffix, ema in (("randaugment", False), ("randaugment-ema", True)):
        body = copy.deepcopy(base)
        body["description"] += "; + RandAugment (N 2, M 9)" + (" + EMA (0.999)" if ema else "")
        body["data"].update({"augment": "randaugment", "randaugment_ops": 2})
        body["data"]["randaugment_magnitude"] = 9
        if ema:
            body["ema"] = {"enabled": True, "decay": 0.999, "every": 1, "warmup": True}
        out[f"cifar100-lt-ir100-bs-{suffix}-lwr"] = body  # "-lwr" last: the naming rule
    return out
