"""`lwr analyze-weights`: why LWR works, read off the classifier's class vectors.

For each checkpoint: per-class weight norms against train counts, the cosine-similarity
matrix ordered by class frequency, pairwise-cosine statistics overall and within/between shot
groups, R_LWR at the run's θ, and the head/tail norm ratio; several checkpoints side by side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from lwrcli.checkpoint import Checkpoint, load_checkpoint
from lwrcli.data.manifest import read_manifest, shot_groups
from lwrcli.errors import UserError
from lwrcli.lwr import lwr_penalty_dense


def frequency_order(class_counts: Sequence[int]) -> np.ndarray:
    """Class ids from most to least frequent (stable for ties)."""
    return np.argsort(-np.asarray(class_counts), kind="stable")


def cosine_matrix(weight: torch.Tensor) -> np.ndarray:
    """(C, C) float64 cosines of the raw class vectors."""
    w = weight.detach().double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w @ w.t()).numpy()


def _pair_stats(cos: np.ndarray, rows: Sequence[int], cols: Sequence[int], same: bool) -> dict:
    """Mean/max cosine over pairs (i in rows, j in cols, i ≠ j); None where there are none."""
    if not len(rows) or not len(cols):
        return {"mean": None, "max": None, "pairs": 0}
    block = cos[np.ix_(rows, cols)]
    if same:
        mask = ~np.eye(len(rows), dtype=bool)
        vals = block[mask]
    else:
        vals = block.ravel()
    if not len(vals):
        return {"mean": None, "max": None, "pairs": 0}
    return {"mean": float(vals.mean()), "max": float(vals.max()), "pairs": int(len(vals))}


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def weight_stats(
    weight: torch.Tensor,
    class_counts: Sequence[int],
    theta: float,
    power: int = 1,
    proj: bool = True,
) -> dict[str, Any]:
    """Norm and angle statistics of class vectors W (C, d) given train counts (C,)."""
    c = weight.shape[0]
    norms = weight.detach().double().norm(dim=1).numpy()
    cos = cosine_matrix(weight)
    groups = shot_groups(class_counts)
    all_ids = list(range(c))
    stats: dict[str, Any] = {"num_classes": c, "overall": _pair_stats(cos, all_ids, all_ids, True)}
    stats["within"] = {g: _pair_stats(cos, ids, ids, True) for g, ids in groups.items()}
    names = list(groups)
    stats["between"] = {
        f"{a}-{b}": _pair_stats(cos, groups[a], groups[b], False)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    with torch.no_grad():
        r = lwr_penalty_dense(weight.detach().double(), theta, power, proj)
    stats["r_lwr"] = {"value": float(r), "theta": theta, "power": power, "proj": proj}
    head = _mean_or_none(norms[groups["many"]])
    tail = _mean_or_none(norms[groups["few"]])
    stats["norm_ratio_head_tail"] = head / tail if head is not None and tail else None
    order = frequency_order(class_counts)
    k = max(1, c // 10)
    stats["norm_ratio_top_bottom"] = float(norms[order[:k]].mean() / norms[order[-k:]].mean())
    logc = np.log(np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0))
    if c > 2 and logc.std() > 0 and norms.std() > 0:
        stats["norm_logcount_corr"] = float(np.corrcoef(norms, logc)[0, 1])
    else:
        stats["norm_logcount_corr"] = None
    stats["norms"] = norms.tolist()
    return stats


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "checkpoint"


def _unique_labels(ckpts: list[Checkpoint]) -> list[str]:
    labels = [ck.label for ck in ckpts]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{i + 1}-{lab}" for i, lab in enumerate(labels)]


def analyze_checkpoints(
    paths: list[Path],
    out: Path,
    data_dir: Path | None = None,
    formats: Sequence[str] = ("png",),
) -> dict[str, Any]:
    """Write plots and summary.json for one or more checkpoints into `out`; return the summary."""
    from lwrcli import plots

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder.")
    ckpts = [load_checkpoint(p) for p in paths]
    manifest = read_manifest(data_dir) if data_dir is not None else None
    sizes = {ck.classifier_weight.shape[0] for ck in ckpts}
    if len(sizes) > 1:
        raise UserError(
            f"Checkpoints have different numbers of classes ({sorted(sizes)}); compare "
            "checkpoints trained on the same dataset."
        )
    num_classes = sizes.pop()
    if manifest is not None and manifest.num_classes != num_classes:
        raise UserError(
            f"Class-count mismatch between checkpoint and dataset: the checkpoints have "
            f"{num_classes} classes, {data_dir} has {manifest.num_classes}."
        )
    counts = manifest.class_counts if manifest else ckpts[0].class_counts
    labels = _unique_labels(ckpts)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"class_counts": list(counts), "checkpoints": []}
    cos_mats, norms = [], []
    for ck, label in zip(ckpts, labels):
        lw = ck.config.lwr
        stats = weight_stats(ck.classifier_weight, counts, lw.theta, lw.power, lw.proj)
        entry = {"label": label, "path": str(ck.path), "epoch": ck.epoch,
                 "lwr_enabled": lw.enabled, **stats}
        summary["checkpoints"].append(entry)
        cos_mats.append(cosine_matrix(ck.classifier_weight))
        norms.append(np.asarray(stats["norms"]))
    order = frequency_order(counts)
    bounds = _group_bounds(counts, order)
    written = []
    for fmt in formats:
        written.append(plots.norms_vs_count(out / f"norms.{fmt}", counts, order, norms, labels))
        written.append(plots.cosine_histogram(out / f"cosine_hist.{fmt}", cos_mats, labels))
        for mat, label in zip(cos_mats, labels):
            path = out / f"cosine_{_slug(label)}.{fmt}"
            written.append(plots.cosine_heatmap(path, mat[np.ix_(order, order)], bounds, label))
    summary["files"] = [str(p.name) for p in written]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _group_bounds(counts: Sequence[int], order: np.ndarray) -> list[tuple[str, int]]:
    """(group name, first position) along the frequency order, for plot boundaries."""
    from lwrcli.data.manifest import shot_group

    bounds, last = [], None
    for pos, c in enumerate(order):
        g = shot_group(int(counts[c]))
        if g != last:
            bounds.append((g, pos))
            last = g
    return bounds


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Class-vector geometry (cosines of classifier weights)")
    for col in ("checkpoint", "C", "mean cos", "max cos", "R_LWR (θ)", "norm many/few"):
        table.add_column(col)
    for e in summary["checkpoints"]:
        table.add_row(
            e["label"],
            str(e["num_classes"]),
            _fmt(e["overall"]["mean"]),
            _fmt(e["overall"]["max"]),
            f"{e['r_lwr']['value']:.4g} ({e['r_lwr']['theta']:g})",
            _fmt(e["norm_ratio_head_tail"]),
        )
    return table
