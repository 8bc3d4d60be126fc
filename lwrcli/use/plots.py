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

# Beyond this many classes a heat map has more cells than pixels; average blocks instead.
MAX_HEATMAP_CELLS = 800


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
    fig, (ax_count, ax_rank) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    ax_count.set_title("Weight norm vs class frequency")
    ax_count.legend(fontsize=8)
    ax_rank.set_xlabel("class rank by train count (head → tail)")
    ax_rank.set_ylabel("classifier weight norm ‖w_c‖")
    ax_rank.set_title("Weight norm along the tail")
    return _save(fig, path)


def _block_mean(mat: np.ndarray, cells: int) -> tuple[np.ndarray, int]:
    """Average (C, C) in square blocks so that at most `cells` rows remain; returns the step."""
    c = mat.shape[0]
    step = -(-c // cells)  # ceil
    if step == 1:
        return mat, 1
    pad = -c % step
    padded = np.pad(mat, ((0, pad), (0, pad)), constant_values=np.nan)
    n = padded.shape[0] // step
    return np.nanmean(padded.reshape(n, step, n, step), axis=(1, 3)), step


def cosine_heatmap(
    path: Path, cos: np.ndarray, bounds: Sequence[tuple[str, int]], label: str
) -> Path:
    """Cosine matrix (C, C), already ordered head -> tail, with shot-group boundary lines.

    bounds: (group name, first position in the order) for each group present.
    """
    shown, step = _block_mean(cos, MAX_HEATMAP_CELLS)
    fig, ax = plt.subplots(figsize=(5.8, 5.0))
    extent = (-0.5, cos.shape[0] - 0.5, cos.shape[0] - 0.5, -0.5)  # axes in class positions
    im = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest", extent=extent)
    for name, pos in bounds:
        if pos > 0:
            ax.axhline(pos - 0.5, color="k", linewidth=0.8)
            ax.axvline(pos - 0.5, color="k", linewidth=0.8)
        ax.text(pos - 0.5, -0.5, f" {name}", fontsize=8, va="bottom", ha="left")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_xlabel("class, ordered by train count (head → tail)")
    ax.set_ylabel("class, ordered by train count (head → tail)")
    note = f" (blocks of {step})" if step > 1 else ""
    ax.set_title(f"Cosines of class vectors: {label}{note}", fontsize=9, pad=16)
    return _save(fig, path)


def cosine_histogram(path: Path, mats: Sequence[np.ndarray], labels: Sequence[str]) -> Path:
    """Distribution of pairwise cosines (i < j) of each (C, C) matrix, checkpoints overlaid.

    Densities, not counts, so checkpoints with different class counts compare directly.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4))
    bins = np.linspace(-1, 1, 81)
    for mat, label in zip(mats, labels):
        iu = np.triu_indices(mat.shape[0], k=1)
        ax.hist(mat[iu], bins=bins, histtype="step", linewidth=1.5, density=True, label=label)
    ax.set_xlabel("pairwise cosine of class vectors")
    ax.set_ylabel("density")
    ax.set_xlim(-1, 1)
    ax.legend(fontsize=8)
    ax.set_title("Pairwise cosines of class vectors")
    return _save(fig, path)
