"""Accuracy reports against hand-computed cases and plain numpy loops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from lwrcli.train.metrics import (
    confusion_matrix,
    format_table,
    group_accuracy,
    per_class_accuracy,
    rounded,
    summarize,
    topk_correct,
    write_confusion_csv,
    write_per_class_csv,
)


def test_topk_and_cap_at_num_classes() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    hits = topk_correct(logits, torch.tensor([2, 1]), (1, 2, 5))
    assert hits[1].tolist() == [False, False]
    assert hits[2].tolist() == [True, False]
    assert hits[5].tolist() == [True, True]  # k capped at C = 3


def test_groups_are_means_of_per_class_accuracy() -> None:
    # counts: classes 0,1 many (>100), 2 medium (20-100), 3 few (<20); class 4 has no test sample.
    counts = [500, 101, 100, 19, 5]
    target = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3])
    pred = torch.tensor([0, 0, 0, 1, 1, 2, 0, 0])
    pc = per_class_accuracy(pred, target, 5)
    assert pc.dtype == torch.float64
    assert pc[:4].tolist() == [75.0, 100.0, 50.0, 0.0] and math.isnan(pc[4])
    groups = group_accuracy(pc, counts)
    # many = mean(75, 100), not the pooled 4/5 = 80; few = class 3 only (class 4 untested)
    assert groups == {
        "many": 87.5,
        "medium": 50.0,
        "few": 0.0,
        "group_sizes": {"many": 2, "medium": 1, "few": 2},
    }
    empty = group_accuracy(pc, [500, 500, 500, 500, 500])
    assert empty["few"] is None and empty["medium"] is None
    assert empty["group_sizes"] == {"many": 5, "medium": 0, "few": 0}


def test_summary_and_confusion_with_fewer_than_five_classes() -> None:
    logits = torch.eye(3)[[0, 1, 1, 2]] * 5
    target = torch.tensor([0, 1, 2, 2])
    s = summarize(logits, target, [200, 50, 3])
    assert s["top1"] == 75.0 and s["top5"] == 100.0  # C = 3 < 5: top-5 holds every class
    assert (s["many"], s["medium"], s["few"]) == (100.0, 100.0, 50.0)
    assert s["group_sizes"] == {"many": 1, "medium": 1, "few": 1}
    assert s["num_samples"] == 4 and s["per_class"] == [100.0, 100.0, 50.0]
    cm = confusion_matrix(logits.argmax(1), target, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


@pytest.mark.parametrize("seed", [0, 1])
def test_random_case_against_numpy_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = 300, 12
    logits = rng.normal(size=(n, c))
    target = rng.integers(0, c - 1, size=n)  # the last class is never tested
    counts = rng.choice([3, 15, 40, 90, 150, 900], size=c)
    s = summarize(torch.from_numpy(logits), torch.from_numpy(target), counts.tolist())

    ranks = np.argsort(-logits, axis=1)
    top1 = np.mean([ranks[i, 0] == target[i] for i in range(n)]) * 100
    top5 = np.mean([target[i] in ranks[i, :5] for i in range(n)]) * 100
    assert s["top1"] == pytest.approx(top1) and s["top5"] == pytest.approx(top5)

    pred = logits.argmax(1)
    per_class = []
    for k in range(c):
        idx = np.flatnonzero(target == k)
        per_class.append(100.0 * np.mean(pred[idx] == k) if len(idx) else None)
    assert s["per_class"][-1] is None
    assert s["per_class"][:-1] == pytest.approx(per_class[:-1])
    masks = {"many": counts > 100, "medium": (counts >= 20) & (counts <= 100), "few": counts < 20}
    for name, keep in masks.items():
        vals = [per_class[k] for k in range(c) if keep[k] and per_class[k] is not None]
        assert s[name] == (pytest.approx(np.mean(vals)) if vals else None)

    expected = np.zeros((c, c), dtype=np.int64)
    for t, p in zip(target, pred):
        expected[t, p] += 1
    got = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), c)
    assert np.array_equal(got.numpy(), expected)


def test_format_table_shows_numbers_and_missing_groups() -> None:
    s = summarize(torch.eye(3)[[0, 1, 1, 2]] * 5, torch.tensor([0, 1, 2, 2]), [200, 150, 300])
    console = Console(record=True, width=140)
    console.print(format_table(s, "eval: demo"))
    text = console.export_text()
    assert "eval: demo" in text and "75.00" in text and "100.00" in text
    assert "— (0 cl.)" in text  # medium and few are empty


def test_per_class_csv(tmp_path: Path) -> None:
    write_per_class_csv(
        tmp_path / "p.csv", [50.0, None, float("nan")], ["a", "b", "c"], [300, 4, 50], [2, 0, 0]
    )
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines == [
        "class_id,class_name,train_count,shot_group,test_count,top1",
        "0,a,300,many,2,50",
        "1,b,4,few,0,",
        "2,c,50,medium,0,",
    ]


def test_output_formats_are_named_and_rounded(tmp_path: Path) -> None:
    """Issue 24: the count column is named after the split, accuracies have 6 significant
    digits, and confusion.csv has a header row (rows true, columns predicted)."""
    write_per_class_csv(tmp_path / "p.csv", [200 / 3], ["a"], [30], [3], split="val")
    assert (tmp_path / "p.csv").read_text().splitlines() == [
        "class_id,class_name,train_count,shot_group,val_count,top1",
        "0,a,30,medium,3,66.6667",
    ]
    cm = confusion_matrix(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1]), 2)
    write_confusion_csv(tmp_path / "c.csv", cm, ["cat", "dog"])
    assert (tmp_path / "c.csv").read_text().splitlines() == [
        "true\\predicted,cat,dog",
        "cat,0,1",  # the one cat was called a dog
        "dog,1,1",
    ]
    assert rounded({"top1": 28.799999999999997, "xs": [1 / 3, None, 7], "ok": True}) == {
        "top1": 28.8,
        "xs": [0.333333, None, 7],
        "ok": True,
    }
    assert json.dumps(rounded(0.1 + 0.2)) == "0.3"
