"""Accuracy reports: top-k, per class, and many/medium/few shot groups.

Shot-group accuracies are means of per-class accuracies (every class counts once, as in the
long-tailed literature), not accuracies over the pooled samples of a group.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from lwrcli.data.manifest import GROUPS, shot_group, shot_groups


def topk_correct(
    logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, torch.Tensor]:
    """logits (N, C), target (N,) -> {k: (N,) bool, target among the k largest logits}.

    k is capped at C, so top-5 on a 3-class problem is always right (not an error).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), largest first
    hits = top == target[:, None]
    return {k: hits[:, : min(k, kmax)].any(1) for k in ks}


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pred, target (N,) -> (C,) float64 percent; NaN for a class with no test samples."""
    total = torch.bincount(target, minlength=num_classes).double()
    right = torch.bincount(target[pred == target], minlength=num_classes).double()
    acc = 100.0 * right / total.clamp_min(1)
    acc[total == 0] = float("nan")
    return acc


def group_accuracy(per_class: torch.Tensor, class_counts: Sequence[int]) -> dict[str, Any]:
    """Mean per-class accuracy (percent) of each shot group by train count.

    per_class (C,) may hold NaN for classes without test samples; they are left out of the
    mean. A group with no (tested) class is None. `group_sizes` gives classes per group.
    """
    out: dict[str, Any] = {}
    groups = shot_groups(class_counts)
    for name in GROUPS:
        vals = per_class[groups[name]].double()
        vals = vals[~torch.isnan(vals)]
        out[name] = float(vals.mean()) if len(vals) else None
    out["group_sizes"] = {name: len(groups[name]) for name in GROUPS}
    return out


def summarize(
    logits: torch.Tensor, target: torch.Tensor, class_counts: Sequence[int]
) -> dict[str, Any]:
    """logits (N, C), target (N,), train counts (C,) -> JSON-ready accuracy report.

    top1/top5 are percent over samples; many/medium/few are means over classes (or None);
    per_class is a list of percents with None for untested classes.
    """
    num_classes = logits.shape[1]
    hits = topk_correct(logits, target, (1, 5))
    per_class = per_class_accuracy(logits.argmax(1), target, num_classes)
    return {
        "top1": 100.0 * float(hits[1].double().mean()),
        "top5": 100.0 * float(hits[5].double().mean()),
        **group_accuracy(per_class, class_counts),
        "num_samples": int(len(target)),
        "per_class": [None if v != v else float(v) for v in per_class.tolist()],
    }


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pred, target (N,) -> (C, C) int64 counts, rows true class, columns predicted class."""
    flat = target.long() * num_classes + pred.long()
    cm = torch.bincount(flat, minlength=num_classes * num_classes)
    return cm.view(num_classes, num_classes)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_table(summary: dict[str, Any], title: str) -> Table:
    """One-row terminal table of a `summarize` report; group cells show their class count."""
    table = Table(title=title)
    sizes = summary.get("group_sizes", {})
    for col in ("top-1 %", "top-5 %", "many %", "medium %", "few %", "samples"):
        table.add_column(col, justify="right")
    table.add_row(
        _pct(summary["top1"]),
        _pct(summary["top5"]),
        *(f"{_pct(summary[g])} ({sizes.get(g, 0)} cl.)" for g in GROUPS),
        str(summary.get("num_samples", "")),
    )
    return table


# Floats in the CSV and JSON files eval and predict write: 6 significant digits (28.8, not
# 28.799999999999997; 0.912346 for a probability).
SIG_DIGITS = 6


def sig(value: float, digits: int = SIG_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (NaN and infinities kept)."""
    return float(f"{value:.{digits}g}")


def rounded(obj: Any, digits: int = SIG_DIGITS) -> Any:
    """A JSON-ready copy of `obj` (dicts, lists, tuples, scalars) with every float rounded
    to `digits` significant digits; ints, bools, strings and None unchanged."""
    if isinstance(obj, float):
        return sig(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def write_per_class_csv(
    path: Path,
    per_class: Sequence[float | None],
    class_names: Sequence[str],
    class_counts: Sequence[int],
    split_counts: Sequence[int],
    split: str = "test",
) -> None:
    """One row per class so a long tail can be inspected in a spreadsheet: its train count and
    shot group, its images in the evaluated split (`<split>_count`) and its top-1 % there
    (empty: no image of the class in that split)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["class_id", "class_name", "train_count", "shot_group", f"{split}_count", "top1"]
        )
        for c, acc in enumerate(per_class):
            missing = acc is None or acc != acc  # None or NaN
            writer.writerow(
                [
                    c,
                    class_names[c],
                    int(class_counts[c]),
                    shot_group(int(class_counts[c])),
                    int(split_counts[c]),
                    "" if missing else f"{acc:.{SIG_DIGITS}g}",
                ]
            )


# The top-left cell of confusion.csv: rows are true classes, columns predicted ones.
CONFUSION_CORNER = "true\\predicted"


def write_confusion_csv(path: Path, matrix: torch.Tensor, class_names: Sequence[str]) -> None:
    """The (C, C) counts of `confusion_matrix` with a header row of the predicted classes'
    names; each row starts with its true class's name."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([CONFUSION_CORNER, *class_names])
        for name, row in zip(class_names, matrix.tolist()):
            writer.writerow([name, *row])
