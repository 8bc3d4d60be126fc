"""Figures of `lwr report`: training curves per group (seeds as a band) and shot-group bars.

Built for up to ~10 groups on one figure: one colour per group (tab10, then tab20), the
legend below the panels, seeds drawn as a min-max band around the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lwrcli.studies.report_charts import subject  # noqa: E402
from lwrcli.use.svg import PALETTE  # noqa: E402

# (metrics.jsonl key, panel title); panels whose key no run recorded are left out.
CURVES = (
    ("task", "task loss"),
    ("lwr", "R (LWR term)"),
    ("lwr_lambda", "λ(t)"),
    ("lr", "learning rate"),
    ("val_top1", "val top-1 %"),
    ("test_top1", "test top-1 %"),
    ("geom_cos_max", "max pairwise cosine (as LWR sees it)"),
    ("geom_r", "R at the run's θ (geometry)"),
    ("geom_frac_above", "fraction of pairs above θ"),
    ("geom_norm_ratio", "weight norm many / few"),
    ("lwr_share", "LWR share of classifier gradient"),
)


def _colors(n: int) -> list[Any]:
    """Okabe-Ito's colour-blind-safe colours (lwrcli.use.svg.PALETTE) up to seven groups,
    tab20 beyond."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    cmap = plt.get_cmap("tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _series(runs: Sequence[Any], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, values (seeds, epochs)) on the epochs every seed recorded, or None."""
    per_run = [{r["epoch"]: r[key] for r in run.records if r.get(key) is not None} for run in runs]
    common = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    if not common:
        return None
    return np.array(common), np.array([[p[e] for e in common] for p in per_run], float)


def curves(path: Path, groups: Sequence[Any]) -> Path | None:
    """Every CURVES panel any group recorded; mean line with a min-max band over seeds."""
    panels = [(k, t) for k, t in CURVES if any(_series(g.runs, k) for g in groups)]
    if not panels:
        return None
    cols = 3
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.3 * cols, 2.9 * nrows), squeeze=False)
    colors = _colors(len(groups))
    for ax, (key, title) in zip(axes.flat, panels):
        for g, color in zip(groups, colors):
            s = _series(g.runs, key)
            if s is None:
                continue
            x, y = s
            ax.plot(x, y.mean(0), color=color, linewidth=1.4, label=g.label)
            if len(y) > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.18, linewidth=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if key in ("lwr_share",) and ax.get_ylim()[1] > 0:
            ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(len(groups), 3), fontsize=8, frameon=False
    )
    legend_rows = -(-len(groups) // 3)
    fig.suptitle(
        f"Training curves of {subject(groups)}: mean over seeds, min–max band", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.035 * legend_rows + 0.02, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def shot_bars(path: Path, groups: Sequence[Any]) -> Path:
    """Many / medium / few / all top-1 per group: mean bars with sample-std error bars."""
    metrics = ("many", "medium", "few", "top1")
    names = ("many", "medium", "few", "all")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 3), 3.8))
    width = 0.8 / max(len(groups), 1)
    colors = _colors(len(groups))
    x = np.arange(len(metrics))
    for i, (g, color) in enumerate(zip(groups, colors)):
        means = [g.stats[m]["mean"] if g.stats[m]["mean"] is not None else np.nan for m in metrics]
        stds = [g.stats[m]["std"] or 0.0 for m in metrics]
        ax.bar(
            x + (i - (len(groups) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=2,
            color=color,
            label=f"{g.label} (n={g.stats['top1']['n']})",
        )
    ax.set_xticks(x, names)
    ax.set_ylabel("top-1 %")
    ax.set_title(f"Accuracy by shot group, mean ± std over seeds: {subject(groups)}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def tensorboard_scalars(out: Path, groups: Sequence[Any]) -> Path | None:
    """Every epoch record as TensorBoard scalars, one folder per group and seed; only when
    the optional `tensorboard` package is importable (never required)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    root = out / "tensorboard"
    for gi, g in enumerate(groups):
        for run in g.runs:
            writer = SummaryWriter(str(root / f"{gi:02d}" / f"seed{run.config.get('seed', 0)}"))
            writer.add_text("group", g.label)
            for rec in run.records:
                for k, v in rec.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                        writer.add_scalar(k, v, rec["epoch"])
            writer.close()
    return root
