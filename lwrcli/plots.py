"""Matplotlib figures for analyze-weights (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def norms_vs_count(
    path: Path,
    counts: Sequence[int],
    order: np.ndarray,
    norms: Sequence[np.ndarray],
    labels: Sequence[str],
) -> Path:
    """Per-class weight norm (left axis) with classes ordered by train count (bars, right)."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = np.arange(len(order))
    for n, label in zip(norms, labels):
        ax.plot(x, n[order], marker=".", linewidth=1.2, label=label)
    ax.set_xlabel("class rank by train count (head → tail)")
    ax.set_ylabel("classifier weight norm ‖w_c‖")
    ax2 = ax.twinx()
    ax2.bar(x, np.asarray(counts)[order], color="0.85", zorder=0, width=1.0)
    ax2.set_yscale("log")
    ax2.set_ylabel("train images (log)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Class weight norms vs class frequency")
    return _save(fig, path)


def cosine_heatmap(
    path: Path, cos: np.ndarray, bounds: Sequence[tuple[str, int]], label: str
) -> Path:
    """Cosine matrix (already ordered by frequency) with many/medium/few boundaries."""
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    for name, pos in bounds:
        if pos > 0:
            ax.axhline(pos - 0.5, color="k", linewidth=0.8)
            ax.axvline(pos - 0.5, color="k", linewidth=0.8)
        ax.text(pos - 0.5, cos.shape[0] - 0.5, f" {name}", fontsize=7, va="bottom", color="k")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_xlabel("class (head → tail)")
    ax.set_ylabel("class (head → tail)")
    ax.set_title(f"Cosines of class vectors: {label}", fontsize=9)
    return _save(fig, path)


def cosine_histogram(path: Path, mats: Sequence[np.ndarray], labels: Sequence[str]) -> Path:
    """Distribution of pairwise cosines (i < j), checkpoints overlaid."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    bins = np.linspace(-1, 1, 81)
    for mat, label in zip(mats, labels):
        iu = np.triu_indices(mat.shape[0], k=1)
        ax.hist(mat[iu], bins=bins, histtype="step", linewidth=1.5, density=True, label=label)
    ax.set_xlabel("pairwise cosine of class vectors")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Pairwise cosines")
    return _save(fig, path)
