"""Accuracy reports: top-k, per class, and many/medium/few shot groups."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from lwrcli.data.manifest import shot_group, shot_groups


def topk_correct(
    logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, torch.Tensor]:
    """For each k: (N,) bool, whether the target is among the k largest logits (k capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == target[:, None]
    return {k: hits[:, : min(k, kmax)].any(1) for k in ks}


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) float64 percent; NaN for a class without samples."""
    total = torch.bincount(target, minlength=num_classes).double()
    right = torch.bincount(target[pred == target], minlength=num_classes).double()
    acc = 100.0 * right / total
    acc[total == 0] = float("nan")
    return acc


def group_accuracy(per_class: torch.Tensor, class_counts: Sequence[int]) -> dict[str, Any]:
    """Mean of per-class accuracies in each shot group (None for an empty group)."""
    out: dict[str, Any] = {}
    for name, ids in shot_groups(class_counts).items():
        vals = per_class[ids] if ids else per_class[:0]
        vals = vals[~torch.isnan(vals)]
        out[name] = float(vals.mean()) if len(vals) else None
    return out


def summarize(
    logits: torch.Tensor, target: torch.Tensor, class_counts: Sequence[int]
) -> dict[str, Any]:
    """top1/top5 over samples, many/medium/few over classes, per-class list, group sizes."""
    num_classes = logits.shape[1]
    hits = topk_correct(logits, target, (1, 5))
    per_class = per_class_accuracy(logits.argmax(1), target, num_classes)
    groups = shot_groups(class_counts)
    return {
        "top1": 100.0 * float(hits[1].double().mean()),
        "top5": 100.0 * float(hits[5].double().mean()),
        **group_accuracy(per_class, class_counts),
        "group_sizes": {k: len(v) for k, v in groups.items()},
        "num_samples": int(len(target)),
        "per_class": [None if v != v else float(v) for v in per_class.tolist()],
    }


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64, rows true class, columns predicted class."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_table(summary: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    sizes = summary.get("group_sizes", {})
    for col in ("top-1", "top-5", "many", "medium", "few"):
        table.add_column(col, justify="right")
    table.add_row(
        _pct(summary["top1"]),
        _pct(summary["top5"]),
        *(f"{_pct(summary[g])} ({sizes.get(g, 0)} cl.)" for g in ("many", "medium", "few")),
    )
    return table


def write_per_class_csv(
    path: Path,
    per_class: Sequence[float | None],
    class_names: Sequence[str],
    class_counts: Sequence[int],
    test_counts: Sequence[int],
) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_id", "class_name", "train_count", "shot_group", "test_count", "top1"])
        for c, acc in enumerate(per_class):
            writer.writerow(
                [
                    c,
                    class_names[c],
                    class_counts[c],
                    shot_group(int(class_counts[c])),
                    test_counts[c],
                    "" if acc is None else f"{acc:.4f}",
                ]
            )
