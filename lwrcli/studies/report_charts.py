"""The figures of `lwr report --html`: training curves per group (seeds as a band),
per-class accuracy against class frequency for each group, and the class-vector geometry of
one seed per group (lwrcli.use.geometry_html, the section `analyze-weights --html` shows).

Everything is read from the run folders: metrics.jsonl (curves; `{split}_per_class` of the
scored epoch, which runs record since lwr 0.1 of issue 26), else the `per_class.csv` of
`lwr eval` for the last checkpoint, and the scored checkpoint's class vectors.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lwrcli.errors import UserError
from lwrcli.runtime.runname import sweep_root
from lwrcli.use import html_page, svg
from lwrcli.use.geometry_html import GeometryView

# (metrics.jsonl key, figure title, y label); a panel no group recorded is left out. The first
# ones are what a long-tail study is judged by; the rest fold away under "More curves".
MAIN_CURVES = (
    ("task", "Task loss by epoch", "task loss"),
    ("{split}_top1", "{Split} top-1 % by epoch", "top-1 %"),
    ("{split}_many", "{Split} top-1 %, many-shot classes (> 100 train images)", "top-1 %"),
    ("{split}_medium", "{Split} top-1 %, medium-shot classes (20-100)", "top-1 %"),
    ("{split}_few", "{Split} top-1 %, few-shot classes (< 20)", "top-1 %"),
    ("lwr_share", "LWR share of the classifier's gradient", "share"),
    ("geom_pairs_above", "Class pairs with cosine above θ (end of epoch)", "pairs"),
)
MORE_CURVES = (
    ("loss", "Training loss (task + λ·R) by epoch", "loss"),
    ("lwr", "R, the LWR term, by epoch", "R"),
    ("lwr_lambda", "λ(t), the LWR weight, by epoch", "λ"),
    ("lr", "Learning rate by epoch", "lr"),
    ("val_top1", "Validation top-1 % by epoch", "top-1 %"),
    ("geom_cos_max", "Largest pairwise cosine of class vectors (as LWR sees them)", "cosine"),
    ("geom_frac_above", "Fraction of class pairs above θ", "fraction"),
    ("geom_norm_ratio", "Weight norm ratio, many / few classes", "ratio"),
)
INTEGER = ("geom_pairs_above", "lwr_pairs_above")  # counts: integer ticks
DOTS_MAX = 400  # classes drawn as dots; above, only the binned means (a page stays small)
BINS = 12  # log-spaced bins of train counts for the per-class mean line


def subject(groups: Sequence[Any]) -> str:
    """What a report shows, for titles: the sweep folders of its runs (else the folder that
    holds them all, or the run's own)."""
    names: list[str] = []
    loose: list[str] = []
    for g in groups:
        for run in g.runs:
            root = sweep_root(run.path)
            if root is None:
                loose.append(str(run.path.resolve()))
            elif root.name not in names:
                names.append(root.name)
    if loose:
        names.append(Path(os.path.commonpath(loose) if len(loose) > 1 else loose[0]).name)
    text = ", ".join(names)
    return text if len(text) <= 80 else f"{len(names)} folders"


def seed_series(runs: Sequence[Any], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, values (seeds, epochs)) on the epochs every seed recorded `key`, or None."""
    per_run = [{r["epoch"]: r[key] for r in run.records if r.get(key) is not None} for run in runs]
    common = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    if not common:
        return None
    return np.array(common), np.array([[p[e] for e in common] for p in per_run], float)


def _panel(groups: Sequence[Any], key: str, title: str, y_label: str) -> str | None:
    series = []
    for k, g in enumerate(groups):
        found = seed_series(g.runs, key)
        if found is None:
            continue
        x, y = found
        band = (y.min(0).tolist(), y.max(0).tolist()) if len(y) > 1 else (None, None)
        series.append(
            svg.Series(g.label, x.tolist(), y.mean(0).tolist(), k, *band, dots=len(x) <= 12)
        )
    if not series:
        return None
    y_range = (0.0, None) if key in ("lwr_share", "geom_pairs_above", "lwr") else (None, None)
    chart = svg.line_chart(
        title, series, "epoch", y_label, int_x=True, int_y=key in INTEGER, y_range=y_range
    )
    return html_page.figure(title, chart)


def curves(report: dict[str, Any]) -> str:
    """Every curve any group recorded: mean over seeds, min-max band."""
    split = report["split"]
    groups = report["groups"]

    def panels(spec: Sequence[tuple[str, str, str]]) -> list[str]:
        out = []
        for key, title, y_label in spec:
            key = key.format(split=split)
            name = title.format(Split="Test" if split == "test" else "Validation")
            if key == "val_top1" and split == "val":
                continue  # already among the main curves
            fig = _panel(groups, key, name, y_label)
            if fig is not None:
                out.append(fig)
        return out

    main, more = panels(MAIN_CURVES), panels(MORE_CURVES)
    if not main and not more:
        return '<p class="note">The runs recorded no curves.</p>'
    legend = html_page.legend([g.label for g in groups])
    body = legend + f'<div class="grid">{"".join(main)}</div>'
    if more:
        body += (
            f"<details><summary>More curves ({len(more)})</summary>"
            f'<div class="grid">{"".join(more)}</div></details>'
        )
    return body


# ---------------------------------------------------------------------------------------------
# Per-class accuracy against class frequency


def scored_record(run: Any) -> dict[str, Any]:
    """The metrics record the report scored (its best-on-val or last epoch)."""
    for rec in run.records:
        if rec.get("epoch") == run.scored_epoch and not rec.get("mid_epoch"):
            return rec
    return run.records[-1] if run.records else {}


def per_class(run: Any, split: str) -> tuple[list[float | None], list[int] | None] | None:
    """(top-1 % per class id, train counts or None) of the scored epoch: the run's record,
    else `lwr eval`'s per_class.csv of the last checkpoint (which holds the counts too)."""
    values = scored_record(run).get(f"{split}_per_class")
    if values is not None:
        return list(values), None
    if run.checkpoint != "last":
        return None
    path = run.path / "eval" / ("last" if split == "test" else f"last-{split}") / "per_class.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return (
            [float(r["top1"]) if r["top1"] != "" else None for r in rows],
            [int(r["train_count"]) for r in rows],
        )
    except (OSError, KeyError, ValueError):
        return None


def binned_means(counts: np.ndarray, acc: np.ndarray, bins: int | None = None) -> tuple[list, list]:
    """Mean accuracy of the classes in each of `bins` log-spaced bins of train counts, at the
    geometric mean count of the bin's classes; bins without a class (or without a tested
    class, NaN accuracy) are left out. counts, acc: (C,); `bins` None: BINS, fewer for few
    classes (about four classes a bin, at least three bins)."""
    bins = bins or min(BINS, max(3, len(counts) // 4))
    keep = ~np.isnan(acc)
    counts, acc = np.maximum(counts[keep].astype(float), 1.0), acc[keep]
    if not len(counts):
        return [], []
    lo, hi = math.log10(counts.min()), math.log10(counts.max())
    edges = np.linspace(lo, hi + 1e-9, bins + 1)
    which = np.clip(np.searchsorted(edges, np.log10(counts), side="right") - 1, 0, bins - 1)
    xs, ys = [], []
    for b in range(bins):
        sel = which == b
        if sel.any():
            xs.append(float(10 ** np.log10(counts[sel]).mean()))
            ys.append(float(acc[sel].mean()))
    return xs, ys


@dataclass
class ClassAccuracy:
    """A group's per-class accuracy: (C,) train counts and mean top-1 % over its seeds."""

    counts: np.ndarray
    acc: np.ndarray
    seeds: int


def group_accuracy(group: Any, split: str, counts: list[int] | None) -> ClassAccuracy | str:
    """The group's per-class accuracy, or why there is none (a sentence for the page)."""
    found = [f for f in (per_class(r, split) for r in group.runs) if f is not None]
    if not found:
        return (
            f"no per-class accuracy recorded (runs of older lwr versions): `lwr eval "
            f"RUN/checkpoints/last.safetensors` writes it for {group.label}"
        )
    counts = counts or next((c for _, c in found if c is not None), None)
    if counts is None:
        return "no class counts (neither the checkpoint nor `lwr eval` output is readable)"
    same = [v for v, _ in found if len(v) == len(counts)]
    if not same:
        return "the per-class accuracies do not match the checkpoint's class count"
    acc = np.array([[np.nan if x is None else x for x in v] for v in same], float)
    with np.errstate(all="ignore"):
        mean = np.nanmean(acc, axis=0) if len(acc) > 1 else acc[0]
    return ClassAccuracy(np.asarray(counts), mean, len(same))


def per_class_section(
    report: dict[str, Any], counts: Sequence[list[int] | None], baseline: int | None
) -> str:
    """One figure per group: its classes as dots (C <= DOTS_MAX) and the mean per bin of
    train counts as a line, the baseline's binned mean dashed behind it."""
    split, groups = report["split"], report["groups"]
    found = [group_accuracy(g, split, c) for g, c in zip(groups, counts)]
    base = found[baseline] if baseline is not None else None
    figs = []
    for k, (g, acc) in enumerate(zip(groups, found)):
        title = f"Per-class {split} top-1 % against train images: {g.label}"
        if isinstance(acc, str):
            figs.append(f'<figure><figcaption>{svg.esc(title)}</figcaption><p class="note">'
                        f"{svg.esc(acc)}.</p></figure>")  # fmt: skip
            continue
        series = []
        if isinstance(base, ClassAccuracy) and k != baseline:
            bx, by = binned_means(base.counts, base.acc)
            series.append(svg.Series("baseline", bx, by, 0, dash="4 3", faint=True))
        c = len(acc.counts)
        if c <= DOTS_MAX:
            series.append(
                svg.Series(g.label, acc.counts.tolist(), acc.acc.tolist(), k, dots=True, line=False)
            )
        bx, by = binned_means(acc.counts, acc.acc)
        series.append(svg.Series(g.label, bx, by, k, dots=True))
        chart = svg.line_chart(
            title, series, "train images of the class (log scale)", f"{split} top-1 %",
            log_x=True, y_range=(0.0, 100.0),
        )  # fmt: skip
        dots = "dots: the classes; " if c <= DOTS_MAX else f"{c} classes, "
        detail = f"{dots}line: mean per log-spaced bin of train images; mean of {acc.seeds} seeds"
        figs.append(html_page.figure(title, chart, detail))
    note = ""
    if baseline is not None:
        note = (f'<p class="note">Dashed grey: the baseline ({svg.esc(groups[baseline].label)})'
                "'s mean per bin, for comparison.</p>")  # fmt: skip
    return note + f'<div class="grid">{"".join(figs)}</div>'


# ---------------------------------------------------------------------------------------------
# Geometry: one seed per group


def scored_checkpoint(run: Any) -> Path:
    """The checkpoint file of the epoch the report scored: `best` or `last`."""
    name = "best" if run.checkpoint.startswith("best") else "last"
    return run.path / "checkpoints" / f"{name}.safetensors"


def group_geometry(group: Any, color: int) -> tuple[GeometryView | None, list[int] | None, str]:
    """The geometry of the group's first seed (its scored checkpoint), its class counts, and
    a note when it cannot be drawn (no checkpoint kept, an unreadable file)."""
    from lwrcli.checkpoint.files import load_checkpoint
    from lwrcli.use.analysis import geometry_view, measure

    run = min(group.runs, key=lambda r: (r.config.get("seed", 0), str(r.path)))
    path = scored_checkpoint(run)
    if not path.is_file():
        return None, _manifest_counts(run), f"{group.label}: no checkpoint at {path}"
    try:
        ck = load_checkpoint(path)
    except UserError as exc:
        return None, _manifest_counts(run), f"{group.label}: {exc}"
    counts = list(ck.class_counts)
    label = f"{group.label} (seed {run.config.get('seed', 0)}, {path.stem})"
    return geometry_view(ck, label, counts, measure(ck, counts), color), counts, ""


def _manifest_counts(run: Any) -> list[int] | None:
    """Train counts from the run's prepared dataset, where it is still there."""
    from lwrcli.data.manifest import read_manifest

    try:
        info = json.loads((run.path / "run.json").read_text(encoding="utf-8"))
        return list(read_manifest(Path(info["data_dir"])).class_counts)
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None
