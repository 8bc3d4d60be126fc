"""Long-tailed profiles and the LDAM-DRW selection."""

from __future__ import annotations

import numpy as np
import pytest

from lwrcli.data.profiles import long_tailed_counts, select_long_tailed
from lwrcli.errors import UserError


@pytest.mark.parametrize(
    "n_max, classes, ir, total",
    [(500, 100, 100, 10847), (500, 100, 50, 12608), (500, 100, 10, 19573), (5000, 10, 100, 12406)],
)
def test_exp_totals_match_the_published_splits(
    n_max: int, classes: int, ir: int, total: int
) -> None:
    counts = long_tailed_counts(n_max, classes, ir, "exp")
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // ir
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_step_and_pareto() -> None:
    assert long_tailed_counts(500, 10, 100, "step") == [500] * 5 + [5] * 5
    p = long_tailed_counts(1280, 1000, 256, "pareto")
    assert p[0] == 1280 and 4 <= p[-1] <= 6
    assert all(a >= b for a, b in zip(p, p[1:]))


def test_imbalance_factor_must_be_a_ratio() -> None:
    with pytest.raises(UserError, match="Did you mean 100"):
        long_tailed_counts(500, 100, 0.01, "exp")
    with pytest.raises(UserError, match="exp, step, pareto"):
        long_tailed_counts(500, 100, 10, "linear")


def ldam_reference(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """LDAM-DRW's IMBALANCECIFAR.gen_imbalanced_data, restated."""
    np.random.seed(seed)
    targets_np = np.array(labels, dtype=np.int64)
    classes = np.unique(targets_np)
    out = []
    for the_class, the_img_num in zip(classes, counts):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        out.append(idx[:the_img_num])
    return np.concatenate(out)


def test_selection_is_ldam_drw_and_leaves_global_state_alone() -> None:
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 50))
    counts = long_tailed_counts(50, 10, 10, "exp")
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    got = select_long_tailed(labels, counts, seed=7)
    assert np.random.random() == before  # caller's global numpy state untouched
    assert np.array_equal(got, ldam_reference(labels, counts, 7))
    assert not np.array_equal(got, ldam_reference(labels, counts, 8))
