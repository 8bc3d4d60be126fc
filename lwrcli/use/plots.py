"""Matplotlib figures for analyze-weights.

The Agg backend is selected before pyplot is imported so plotting works on headless machines
(clusters, CI) and never opens a window. Every function takes plain arrays and a path, saves,
closes its figure (long comparisons must not accumulate open figures) and returns the path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lwrcli.use.svg import PALETTE  # noqa: E402
from lwrcli.use.svg import block_means as _block_mean  # noqa: E402, F401

# Beyond this many classes a heat map has more cells than pixels; average blocks instead.
MAX_HEATMAP_CELLS = 800
# A title names the checkpoints it shows; past this length it says how many (see the legend).
TITLE_NAMES = 60


def which(labels: Sequence[str]) -> str:
    """The checkpoints a figure shows, for its title."""
    text = ", ".join(labels)
    return text if len(text) <= TITLE_NAMES else f"{len(labels)} checkpoints (see legend)"


def _integer_ticks(*axes: object) -> None:
    """Class ids and ranks are integers: no 2.5 on their axes."""
    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True))  # type: ignore[attr-defined]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def norms_vs_count(
    path: Path,
    counts: Sequence[np.ndarray],
    norms: Sequence[np.ndarray],
    labels: Sequence[str],
) -> Path:
    """Per-class weight norm against train count (log x) and against frequency rank.

    counts[i], norms[i]: (C_i,) for checkpoint i; all checkpoints are overlaid. The rank panel
    keeps classes with equal counts apart, which the count panel cannot.
    """
    fig, (ax_count, ax_rank) = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax in (ax_count, ax_rank):
        ax.set_prop_cycle(color=PALETTE)  # Okabe-Ito: colour-blind safe
    for cnt, nrm, label in zip(counts, norms, labels):
        cnt = np.asarray(cnt, dtype=np.float64)
        order = np.argsort(-cnt, kind="stable")  # head -> tail
        (line,) = ax_count.plot(
            np.maximum(cnt[order], 1.0), nrm[order], marker=".", linewidth=1.0, label=label
        )
        ax_rank.plot(np.arange(len(order)), nrm[order], color=line.get_color(), linewidth=1.2)
    ax_count.set_xscale("log")
    ax_count.set_xlabel("train images of the class (log scale)")
    ax_count.set_ylabel("classifier weight norm ‖w_c‖")
    ax_count.set_title("Weight norm vs class frequency", fontsize=10)
    ax_count.legend(fontsize=8)
    ax_rank.set_xlabel("class rank by train count (head → tail)")
    ax_rank.set_ylabel("classifier weight norm ‖w_c‖")
    ax_rank.set_title("Weight norm along the tail", fontsize=10)
    _integer_ticks(ax_rank.xaxis)
    fig.suptitle(f"Classifier weight norm per class: {which(labels)}", fontsize=11)
    return _save(fig, path)


def cosine_heatmap(
    path: Path, cos: np.ndarray, bounds: Sequence[tuple[str, int]], label: str
) -> Path:
    """Cosine matrix (C, C), already ordered head -> tail, with shot-group boundary lines.

    bounds: (group name, first position in the order) for each group present.
    """
    shown, step = _block_mean(cos, MAX_HEATMAP_CELLS)
    fig, ax = plt.subplots(figsize=(5.8, 5.0))
    c, span = cos.shape[0], shown.shape[0] * step  # a last, partial block is cut at C
    extent = (-0.5, span - 0.5, span - 0.5, -0.5)  # axes in class positions
    im = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest", extent=extent)
    ax.set_xlim(-0.5, c - 0.5)
    ax.set_ylim(c - 0.5, -0.5)
    for name, pos in bounds:
        if pos > 0:
            ax.axhline(pos - 0.5, color="k", linewidth=0.8)
            ax.axvline(pos - 0.5, color="k", linewidth=0.8)
        ax.text(pos - 0.5, -0.5, f" {name}", fontsize=8, va="bottom", ha="left")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_xlabel("class rank by train count (head → tail)")
    ax.set_ylabel("class rank by train count (head → tail)")
    _integer_ticks(ax.xaxis, ax.yaxis)
    note = f"\n(shown as {step}×{step} block means)" if step > 1 else ""
    ax.set_title(f"Cosines of class vectors: {label}{note}", fontsize=9, pad=16)
    return _save(fig, path)


def cosine_histogram(path: Path, mats: Sequence[np.ndarray], labels: Sequence[str]) -> Path:
    """Distribution of pairwise cosines (i < j) of each (C, C) matrix, checkpoints overlaid.

    Densities, not counts, so checkpoints with different class counts compare directly.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.set_prop_cycle(color=PALETTE)
    bins = np.linspace(-1, 1, 81)
    for mat, label in zip(mats, labels):
        iu = np.triu_indices(mat.shape[0], k=1)
        ax.hist(mat[iu], bins=bins, histtype="step", linewidth=1.5, density=True, label=label)
    ax.set_xlabel("pairwise cosine of class vectors")
    ax.set_ylabel("density")
    ax.set_xlim(-1, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"Pairwise cosines of class vectors: {which(labels)}", fontsize=10)
    return _save(fig, path)
