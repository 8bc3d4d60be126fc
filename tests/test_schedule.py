"""Learning-rate schedule against the recipe's numbers."""

from __future__ import annotations

import math

import pytest

from lwrcli.config import ScheduleConfig
from lwrcli.train.schedule import lr_at

LDAM = ScheduleConfig(
    kind="multistep", warmup_epochs=5, milestones=[160, 180], factors=[0.01, 1e-4]
)


def test_ldam_recipe_epoch_values() -> None:
    # LDAM-DRW: epoch e (0-based) < 5 uses lr * (e + 1) / 5; reached at each epoch's end here.
    for e in range(5):
        assert lr_at(LDAM, 0.1, e + 1.0 - 1e-12, 200) == pytest.approx(0.1 * (e + 1) / 5)
    assert lr_at(LDAM, 0.1, 5.5, 200) == pytest.approx(0.1)
    assert lr_at(LDAM, 0.1, 159.99, 200) == pytest.approx(0.1)
    assert lr_at(LDAM, 0.1, 160.01, 200) == pytest.approx(0.001)
    assert lr_at(LDAM, 0.1, 179.99, 200) == pytest.approx(0.001)
    assert lr_at(LDAM, 0.1, 180.5, 200) == pytest.approx(1e-5)


def test_cosine_to_min() -> None:
    cfg = ScheduleConfig(kind="cosine", warmup_epochs=0, min_lr=0.0)
    assert lr_at(cfg, 0.2, 0.0, 90) == pytest.approx(0.2)
    assert lr_at(cfg, 0.2, 45.0, 90) == pytest.approx(0.1)
    assert lr_at(cfg, 0.2, 90.0, 90) == pytest.approx(0.0, abs=1e-12)
    t = 30.0
    assert lr_at(cfg, 0.2, t, 90) == pytest.approx(0.1 * (1 + math.cos(math.pi * t / 90)))


def test_warmup_then_cosine_is_continuous() -> None:
    cfg = ScheduleConfig(kind="cosine", warmup_epochs=2)
    assert lr_at(cfg, 1.0, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(cfg, 1.0, 2.0 - 1e-9, 10) == pytest.approx(1.0, abs=1e-6)
    assert lr_at(cfg, 1.0, 2.0, 10) == pytest.approx(1.0)
