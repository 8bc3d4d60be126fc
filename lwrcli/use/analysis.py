"""`lwr analyze-weights`: why LWR works, read off the classifier's class vectors.

For each checkpoint: per-class weight norms against train counts, the cosine-similarity
matrix of the raw class vectors ordered by class frequency, pairwise-cosine statistics overall
and within/between shot groups, R_LWR at the run's θ/power/proj, and norm ratios between head
and tail classes. Several checkpoints (say BS and BS + LWR) are overlaid in the same plots.
A multi-expert checkpoint (K classifier heads) gets the same numbers for every expert
(`experts`) and the cosine between two experts' vectors of the same class (`expert_pairs`).
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

from lwrcli.checkpoint.files import THETA_REFERENCE, load_checkpoint
from lwrcli.data.manifest import GROUPS, read_manifest, shot_group, shot_groups
from lwrcli.errors import UserError
from lwrcli.runtime.files import write_atomic
from lwrcli.runtime.results import check_results_folder, results_folder
from lwrcli.train.lwr import Margin, head_margin, lwr_penalty, resolve_margin
from lwrcli.use import geometry_html, html_page, plots
from lwrcli.use.geometry_html import GeometryView, cosine_density
from lwrcli.use.html_page import check_html_path, write_html
from lwrcli.use.svg import HEATMAP_CELLS, block_means

FORMATS = ("png", "svg")


def frequency_order(class_counts: Sequence[int]) -> np.ndarray:
    """(C,) class ids from most to least frequent; ties keep class-id order."""
    return np.argsort(-np.asarray(class_counts, dtype=np.int64), kind="stable")


def cosine_matrix(weight: torch.Tensor) -> np.ndarray:
    """weight (C, d) -> (C, C) float64 cosines of the raw class vectors (a zero row gives 0)."""
    w = weight.detach().double().cpu()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w @ w.t()).numpy()


def _pairs(cos: np.ndarray, rows: Sequence[int], cols: Sequence[int] | None) -> dict[str, Any]:
    """Mean/max cosine over unordered pairs: inside `rows` (cols None) or rows × cols.

    cos is symmetric, so the mean over ordered pairs i ≠ j equals the mean over i < j.
    """
    if cols is None:
        k = len(rows)
        if k < 2:
            return {"mean": None, "max": None, "pairs": 0}
        block = cos[np.ix_(rows, rows)]
        total = float(block.sum() - np.trace(block))
        np.fill_diagonal(block, -np.inf)  # block is a copy; cos is untouched
        pairs = k * (k - 1) // 2
        return {"mean": total / (2 * pairs), "max": float(block.max()), "pairs": pairs}
    if not len(rows) or not len(cols):
        return {"mean": None, "max": None, "pairs": 0}
    block = cos[np.ix_(rows, cols)]
    return {"mean": float(block.mean()), "max": float(block.max()), "pairs": int(block.size)}


def _between_all(cos: np.ndarray, groups: dict[str, list[int]]) -> dict[str, Any]:
    """Pooled statistics over every pair whose two classes sit in different groups."""
    parts = [
        _pairs(cos, groups[a], groups[b]) for i, a in enumerate(GROUPS) for b in GROUPS[i + 1 :]
    ]
    parts = [p for p in parts if p["pairs"]]
    if not parts:
        return {"mean": None, "max": None, "pairs": 0}
    pairs = sum(p["pairs"] for p in parts)
    mean = sum(p["mean"] * p["pairs"] for p in parts) / pairs
    return {"mean": mean, "max": max(p["max"] for p in parts), "pairs": pairs}


def _ratio(num: np.ndarray, den: np.ndarray) -> float | None:
    if not len(num) or not len(den) or den.mean() == 0:
        return None
    return float(num.mean() / den.mean())


def weight_stats(
    weight: torch.Tensor,
    class_counts: Sequence[int],
    theta: Margin,
    power: int = 1,
    proj: bool = True,
) -> dict[str, Any]:
    """Norm and angle statistics of class vectors weight (C, d) given train counts (C,).

    Returns: `norms` (C,) list; `order` (C,) class ids head -> tail; `cosine` (C, C) float64
    ndarray of the raw vectors; `overall`, `within[group]`, `between["many-medium" | ... |
    "all"]` as {mean, max, pairs} over unordered pairs i ≠ j (None where there are no pairs);
    `r_lwr` = R(W) at θ/power/proj (LWR.md); `norm_ratio_head_tail` = mean norm of many-shot
    classes / mean norm of few-shot classes (None when either group is empty);
    `norm_ratio_top_bottom` = the same for the 10% most / least frequent classes (at least one
    each, so defined for C ≥ 2); `norm_count_corr` = Pearson correlation of norm with log
    train count (None when either is constant).
    """
    c = weight.shape[0]
    if len(class_counts) != c:
        raise UserError(
            f"Class-count mismatch: the classifier has {c} class vectors but {len(class_counts)} "
            "class counts were given."
        )
    norms = weight.detach().double().cpu().norm(dim=1).numpy()
    cos = cosine_matrix(weight)
    groups = shot_groups(class_counts)
    order = frequency_order(class_counts)
    stats: dict[str, Any] = {
        "num_classes": c,
        "group_sizes": {g: len(groups[g]) for g in GROUPS},
        "overall": _pairs(cos, list(range(c)), None),
        "within": {g: _pairs(cos, groups[g], None) for g in GROUPS},
        "between": {
            f"{a}-{b}": _pairs(cos, groups[a], groups[b])
            for i, a in enumerate(GROUPS)
            for b in GROUPS[i + 1 :]
        },
    }
    stats["between"]["all"] = _between_all(cos, groups)
    with torch.no_grad():
        # Blockwise: never a (C, C) float64 matrix (530 MB at C = 8142).
        r = lwr_penalty(weight.detach().double().cpu(), theta, power, proj, block_size=512)
    shown = "init" if isinstance(theta, torch.Tensor) else theta
    stats["r_lwr"] = {"value": float(r), "theta": shown, "power": power, "proj": proj}
    stats["norm_ratio_head_tail"] = _ratio(norms[groups["many"]], norms[groups["few"]])
    k = max(1, c // 10)
    stats["norm_ratio_top_bottom"] = _ratio(norms[order[:k]], norms[order[-k:]]) if c >= 2 else None
    logc = np.log(np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0))
    if c > 2 and logc.std() > 0 and norms.std() > 0:
        stats["norm_count_corr"] = float(np.corrcoef(norms, logc)[0, 1])
    else:
        stats["norm_count_corr"] = None
    stats["norms"] = norms.tolist()
    stats["order"] = order.tolist()
    stats["cosine"] = cos
    return stats


EXPERT_KEYS = ("overall", "within", "between", "r_lwr", "norm_ratio_head_tail")
EXPERT_KEYS += ("norm_ratio_top_bottom", "norm_count_corr", "norms")


def expert_stats(
    ck: Any, class_counts: Sequence[int], margin: Margin, power: int = 1, proj: bool = True
) -> dict[str, Any]:
    """For a checkpoint with K > 1 classifier heads: `experts`, `weight_stats` of each head
    (its norms, cosines, R_LWR at its own margin), `expert_pairs`, the cosine between the
    vectors of the same class in two experts (mean / min / max over classes and the mean per
    shot group), and `expert_same_class_cos`, their mean. Nothing for one head."""
    keys = ck.classifier_keys
    if len(keys) < 2:
        return {}
    weights = [ck.state[k] for k in keys]
    experts = []
    for k, (key, w) in enumerate(zip(keys, weights)):
        st = weight_stats(w, class_counts, head_margin(margin, k), power, proj)
        experts.append({"expert": k + 1, "key": key, **{x: st[x] for x in EXPERT_KEYS}})
    groups = shot_groups(class_counts)
    pairs = []
    for a in range(len(weights)):
        for b in range(a + 1, len(weights)):
            ua, ub = (w.detach().double().cpu() for w in (weights[a], weights[b]))
            cos = (ua / ua.norm(dim=1, keepdim=True).clamp_min(1e-12)) * (
                ub / ub.norm(dim=1, keepdim=True).clamp_min(1e-12)
            )
            per_class = cos.sum(1).numpy()
            pairs.append(
                {
                    "experts": [a + 1, b + 1],
                    "mean": float(per_class.mean()),
                    "min": float(per_class.min()),
                    "max": float(per_class.max()),
                    **{
                        g: float(per_class[groups[g]].mean()) if groups[g] else None for g in GROUPS
                    },
                }
            )
    same = float(np.mean([p["mean"] for p in pairs]))
    return {"experts": experts, "expert_pairs": pairs, "expert_same_class_cos": same}


def group_bounds(class_counts: Sequence[int]) -> list[tuple[str, int]]:
    """(group name, first position along the head -> tail order) for each group present."""
    bounds: list[tuple[str, int]] = []
    for pos, c in enumerate(frequency_order(class_counts)):
        g = shot_group(int(class_counts[c]))
        if not bounds or bounds[-1][0] != g:
            bounds.append((g, pos))
    return bounds


def _unique(names: Sequence[str], taken: set[str]) -> list[str]:
    """Append -2, -3, ... to repeated names (and to names already in `taken`)."""
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        taken.add(candidate)
        out.append(candidate)
    return out


def checkpoint_labels(ckpts: Sequence[Any]) -> list[str]:
    """Run and checkpoint name of each (`bs-lwr/theta=0.4/seed=0/best`, `runA/last`); a file
    outside a run folder by its name, with its folder's when files of one name in different
    folders are compared; the same checkpoint given twice numbered -2, -3, ..."""
    labels, folders = [], []
    for ck in ckpts:
        inside = ck.path is not None and ck.path.parent.name == "checkpoints"
        labels.append(f"{ck.label}/{ck.path.stem}" if inside else ck.label)
        folders.append(None if inside or ck.path is None else ck.path.parent)
    named = list(labels)
    for i, folder in enumerate(folders):
        same = {f for f, lab in zip(folders, named) if f is not None and lab == named[i]}
        if folder is not None and len(same) > 1:
            labels[i] = f"{folder.name}/{named[i]}"
    return _unique(labels, set())


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so an interrupted run leaves no half file."""
    write_atomic(path, text)


def analyze_checkpoints(
    paths: list[Path],
    out: Path | None,
    data_dir: Path | None = None,
    formats: Sequence[str] = ("png",),
    overwrite: bool = False,
    html: Path | None = None,
) -> dict[str, Any]:
    """Write plots and summary.json for one or more checkpoints into `out`, and/or the same
    geometry as one self-contained page `html`; return the summary.

    Class counts and names come from the dataset manifest when `data_dir` is given, else from
    each checkpoint's own metadata. A folder that already holds files, or an existing page, is
    refused unless `overwrite`, which replaces it whole (lwrcli.runtime.results).
    """
    if not paths:
        raise UserError("Give at least one checkpoint to analyze.")
    if out is None and html is None:
        raise UserError("Give --out DIR (plots and summary.json), --html FILE.html, or both.")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"Unknown plot format {bad[0]!r}; choose from {', '.join(FORMATS)}.")
    inputs = [Path(p) for p in paths] + ([Path(data_dir)] if data_dir is not None else [])
    if out is not None:
        check_results_folder(out, overwrite, inputs)
    if html is not None:
        check_html_path(html, overwrite, inputs)
    ckpts = [load_checkpoint(Path(p)) for p in paths]
    manifest = read_manifest(data_dir) if data_dir is not None else None
    if manifest is not None:
        for ck in ckpts:
            if ck.classifier_weight.shape[0] != manifest.num_classes:
                raise UserError(
                    f"Class-count mismatch between checkpoint and dataset: {ck.path} has "
                    f"{ck.classifier_weight.shape[0]} classes, {data_dir} has "
                    f"{manifest.num_classes}. Pass the dataset the checkpoint was trained on."
                )
    labels = checkpoint_labels(ckpts)
    # "hist" is reserved so a run named "hist" cannot overwrite cosine_hist.*
    slugs = _unique([re.sub(r"[^A-Za-z0-9_.-]+", "_", lab) or "run" for lab in labels], {"hist"})
    counts = [list(manifest.class_counts) if manifest else list(ck.class_counts) for ck in ckpts]
    measured = [measure(ck, c) for ck, c in zip(ckpts, counts)]
    summary: dict[str, Any] = {}
    if out is not None:
        with results_folder(Path(out), overwrite, inputs) as staging:
            summary = _write_analysis(
                staging, ckpts, labels, slugs, manifest, data_dir, formats, measured
            )
    if html is not None:
        views = [geometry_view(*a, i) for i, a in enumerate(zip(ckpts, labels, counts, measured))]
        names = ", ".join(labels) if len(", ".join(labels)) <= 80 else f"{len(labels)} checkpoints"
        title = f"lwr analyze-weights: {names}"
        body = geometry_html.section(views)
        write_html(html, html_page.page(title, body), overwrite, inputs)
        if not summary:  # the numbers summary.json would hold, for the terminal table
            rows = [{"label": lab, **st} for lab, (st, _) in zip(labels, measured)]
            summary = {"checkpoints": rows}
    return summary


def measure(ck: Any, counts: Sequence[int]) -> tuple[dict[str, Any], np.ndarray]:
    """`weight_stats` of a checkpoint's classifier at its run's θ/power/proj (plus
    `expert_stats` for several heads), and apart from them its (C, C) cosine matrix."""
    lw = ck.config.lwr
    margin = lw.theta
    if lw.theta == "init":  # each pair's margin is its cosine at initialisation
        margin = resolve_margin("init", ck.extras.get(THETA_REFERENCE))
    first = head_margin(margin, 0)  # the first head's (all heads': `experts`)
    stats = weight_stats(ck.classifier_weight, counts, first, lw.power, lw.proj)
    stats.update(expert_stats(ck, counts, margin, lw.power, lw.proj))
    return stats, stats.pop("cosine")


def geometry_view(
    ck: Any, label: str, counts: Sequence[int], measured: tuple[dict, np.ndarray], color: int
) -> GeometryView:
    """What the HTML pages draw of a checkpoint: its stats, the heat map of each head ordered
    head -> tail as block means of at most svg.HEATMAP_CELLS cells, the cosine density."""
    stats, mat = measured
    order = frequency_order(counts)
    keys = ck.classifier_keys
    heads = [("", mat)]
    if len(keys) > 1:
        heads = [(f"expert {k + 1}", cosine_matrix(ck.state[key])) for k, key in enumerate(keys)]
    maps = []
    for name, m in heads:
        shown, step = block_means(m, HEATMAP_CELLS, order)
        maps.append((name, np.array(shown, dtype=np.float32), step))
    return GeometryView(
        label, list(map(int, counts)), stats, maps, cosine_density(mat), color,
        group_bounds(counts),
    )  # fmt: skip


def _write_analysis(
    out: Path,
    ckpts: Sequence[Any],
    labels: list[str],
    slugs: list[str],
    manifest: Any,
    data_dir: Path | None,
    formats: Sequence[str],
    measured: Sequence[tuple[dict[str, Any], np.ndarray]],
) -> dict[str, Any]:
    """The plots and summary.json of `analyze_checkpoints`, written into `out`."""
    entries, mats, all_counts, all_norms = [], [], [], []
    for (ck, label, slug), (stats, mat) in zip(zip(ckpts, labels, slugs), measured):
        counts = list(manifest.class_counts) if manifest else list(ck.class_counts)
        names = list(manifest.class_names) if manifest else list(ck.class_names)
        lw = ck.config.lwr
        order = np.asarray(stats["order"])
        files = []
        for fmt in formats:
            path = out / f"cosine_{slug}.{fmt}"
            plots.cosine_heatmap(path, mat[np.ix_(order, order)], group_bounds(counts), label)
            files.append(path.name)
        entries.append(
            {
                "label": label,
                "path": str(ck.path),
                "epoch": ck.epoch,
                "lwr_enabled": lw.enabled,
                **stats,
                "class_counts": counts,
                "class_names": names,
                "files": files,
            }
        )
        mats.append(mat)
        all_counts.append(np.asarray(counts))
        all_norms.append(np.asarray(stats["norms"]))

    shared = []
    for fmt in formats:
        shared.append(
            plots.norms_vs_count(out / f"norms.{fmt}", all_counts, all_norms, labels).name
        )
        shared.append(plots.cosine_histogram(out / f"cosine_hist.{fmt}", mats, labels).name)
    summary: dict[str, Any] = {
        "counts_from": f"dataset {data_dir}" if manifest else "checkpoint metadata",
        "checkpoints": entries,
        "files": ["summary.json", *shared, *(f for e in entries for f in e["files"])],
    }
    _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def summary_table(summary: dict[str, Any]) -> Table:
    """Terminal table: one row per checkpoint with the headline geometry numbers."""
    table = Table(title="Class-vector geometry (cosines of classifier weights)")
    columns = ("checkpoint", "C", "mean cos", "max cos", "R_LWR (θ)", "norm many/few", "top/bottom")
    for col in columns:  # a label (run/checkpoint) too long for the width folds, never cut
        if col == "checkpoint":
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="right")
    for e in summary["checkpoints"]:
        table.add_row(
            e["label"],
            str(e["num_classes"]),
            _fmt(e["overall"]["mean"]),
            _fmt(e["overall"]["max"]),
            f"{e['r_lwr']['value']:.4g} ({_theta_text(e['r_lwr']['theta'])})",
            _fmt(e["norm_ratio_head_tail"]),
            _fmt(e["norm_ratio_top_bottom"]),
        )
        for x in e.get("experts", []):
            table.add_row(
                f"{e['label']} · expert {x['expert']}",
                str(e["num_classes"]),
                _fmt(x["overall"]["mean"]),
                _fmt(x["overall"]["max"]),
                f"{x['r_lwr']['value']:.4g} ({_theta_text(x['r_lwr']['theta'])})",
                _fmt(x["norm_ratio_head_tail"]),
                _fmt(x["norm_ratio_top_bottom"]),
            )
        if e.get("expert_pairs"):
            same = e["expert_same_class_cos"]
            table.caption = (table.caption or "") + (
                f"{e['label']}: cosine between experts' vectors of the same class "
                f"{_fmt(same)} (mean over classes and expert pairs). "
            )
    return table


def _theta_text(theta: float | str) -> str:
    return theta if isinstance(theta, str) else f"{theta:g}"
