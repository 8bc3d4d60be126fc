"""Long-tailed profiles and the LDAM-DRW selection."""

from __future__ import annotations

import numpy as np
import pytest

from lwrcli.data.profiles import long_tailed_counts, select_long_tailed
from lwrcli.errors import UserError


def ldam_img_num_per_cls(img_max: float, cls_num: int, imb_type: str, imb_factor: float) -> list:
    """LDAM-DRW's get_img_num_per_cls restated (imb_factor is its inverse IF, e.g. 0.01)."""
    img_num_per_cls = []
    if imb_type == "exp":
        for cls_idx in range(cls_num):
            num = img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))
            img_num_per_cls.append(int(num))
    else:
        for _ in range(cls_num // 2):
            img_num_per_cls.append(int(img_max))
        for _ in range(cls_num - cls_num // 2):
            img_num_per_cls.append(int(img_max * imb_factor))
    return img_num_per_cls


def ldam_reference(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """LDAM-DRW's IMBALANCECIFAR.gen_imbalanced_data restated: which train indices it keeps."""
    np.random.seed(seed)
    targets_np = np.array(labels, dtype=np.int64)
    classes = np.unique(targets_np)
    kept = []
    for the_class, the_img_num in zip(classes, counts):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        kept.append(idx[:the_img_num])
    return np.concatenate(kept)


@pytest.mark.parametrize(
    "n_max, classes, ir, total",
    [(500, 100, 100, 10847), (500, 100, 50, 12608), (500, 100, 10, 19573), (5000, 10, 100, 12406)],
)
def test_exp_totals_match_the_published_splits(n_max: int, classes: int, ir: int, total: int):
    counts = long_tailed_counts(n_max, classes, ir, "exp")
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // ir
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    # LDAM-DRW computes img_max as a float (len(data) / cls_num) and passes 1 / IF.
    assert counts == ldam_img_num_per_cls(float(n_max), classes, "exp", 1 / ir)


@pytest.mark.parametrize("n_max, classes, ir", [(500, 100, 100), (5000, 10, 50), (500, 100, 3)])
def test_step_is_ldam_drw_step(n_max: int, classes: int, ir: float) -> None:
    counts = long_tailed_counts(n_max, classes, ir, "step")
    assert counts == ldam_img_num_per_cls(float(n_max), classes, "step", 1 / ir)
    half = classes // 2
    assert counts[:half] == [n_max] * half and set(counts[half:]) == {int(n_max / ir)}
    assert long_tailed_counts(500, 10, 100, "step") == [500] * 5 + [5] * 5


def test_pareto_is_a_power_law_from_n_max_to_n_max_over_if() -> None:
    p = np.array(long_tailed_counts(1280, 1000, 256, "pareto"))
    assert p[0] == 1280 and p[-1] == 5 and p.min() >= 1
    assert np.all(np.diff(p) <= 0)
    # Straight line in log-log (rank, count) with slope -ln(IF)/ln(C), up to rounding.
    ranks = np.arange(1, 1001)
    head = p > 50  # where rounding to integers is a small relative error
    slope = np.polyfit(np.log(ranks[head]), np.log(p[head]), 1)[0]
    assert slope == pytest.approx(-np.log(256) / np.log(1000), rel=0.01)
    assert long_tailed_counts(500, 100, 1, "pareto") == [500] * 100


def test_imbalance_factor_and_profile_are_checked() -> None:
    with pytest.raises(
        UserError, match=r"ratio of the largest to the smallest.*Did you mean 100\?"
    ):
        long_tailed_counts(500, 100, 0.01, "exp")
    with pytest.raises(UserError, match="must be >= 1"):
        long_tailed_counts(500, 100, float("nan"), "exp")
    with pytest.raises(UserError, match="Did you mean 'step'.*exp, step, pareto"):
        long_tailed_counts(500, 100, 10, "stpe")
    with pytest.raises(UserError, match="exp, step, pareto"):
        long_tailed_counts(500, 100, 10, "linear")
    assert long_tailed_counts(500, 1, 10, "exp") == [500]


def test_selection_is_ldam_drw_and_leaves_global_state_alone() -> None:
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 50))
    counts = long_tailed_counts(50, 10, 10, "exp")
    np.random.seed(123)
    expected_next = np.random.random(3)
    np.random.seed(123)
    got = select_long_tailed(labels, counts, seed=7)
    assert np.array_equal(np.random.random(3), expected_next)  # caller's stream untouched
    assert got.dtype == np.int64
    assert np.array_equal(got, ldam_reference(labels, counts, 7))
    assert not np.array_equal(got, ldam_reference(labels, counts, 8))
    assert np.bincount(labels[got]).tolist() == counts


def test_selection_refuses_impossible_requests() -> None:
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(UserError, match="asks for 5"):
        select_long_tailed(labels, [5, 4, 4], seed=0)
    with pytest.raises(UserError, match="3 classes but the profile has 2"):
        select_long_tailed(labels, [4, 4], seed=0)
