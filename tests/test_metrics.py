"""Accuracy reports against hand-computed cases."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lwrcli.metrics import (
    confusion_matrix,
    group_accuracy,
    per_class_accuracy,
    summarize,
    topk_correct,
    write_per_class_csv,
)


def test_topk_and_cap_at_num_classes() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    hits = topk_correct(logits, torch.tensor([2, 1]), (1, 2, 5))
    assert hits[1].tolist() == [False, False]
    assert hits[2].tolist() == [True, False]
    assert hits[5].tolist() == [True, True]  # k capped at C = 3


def test_groups_are_means_of_per_class_accuracy() -> None:
    # counts: classes 0,1 many (>100), 2 medium, 3 few; class 4 has no test sample.
    counts = [500, 101, 100, 19, 5]
    target = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3])
    pred = torch.tensor([0, 0, 0, 1, 1, 2, 0, 0])
    pc = per_class_accuracy(pred, target, 5)
    assert pc[:4].tolist() == [75.0, 100.0, 50.0, 0.0] and math.isnan(pc[4])
    groups = group_accuracy(pc, counts)
    assert groups == {"many": 87.5, "medium": 50.0, "few": 0.0}
    assert group_accuracy(pc, [500, 500, 500, 500, 500])["few"] is None


def test_summary_and_confusion() -> None:
    logits = torch.eye(3)[[0, 1, 1, 2]] * 5
    target = torch.tensor([0, 1, 2, 2])
    s = summarize(logits, target, [200, 50, 3])
    assert s["top1"] == 75.0 and s["top5"] == 100.0
    assert (s["many"], s["medium"], s["few"]) == (100.0, 100.0, 50.0)
    assert s["group_sizes"] == {"many": 1, "medium": 1, "few": 1}
    cm = confusion_matrix(logits.argmax(1), target, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_per_class_csv(tmp_path: Path) -> None:
    write_per_class_csv(tmp_path / "p.csv", [50.0, None], ["a", "b"], [300, 4], [2, 0])
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines == [
        "class_id,class_name,train_count,shot_group,test_count,top1",
        "0,a,300,many,2,50.0000",
        "1,b,4,few,0,",
    ]
