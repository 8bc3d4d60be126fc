"""The geometry section of the HTML pages: what `lwr analyze-weights` shows, for any number
of checkpoints side by side (`analyze-weights --html`, and one seed per group in
`lwr report --html`).

The numbers come from lwrcli.use.analysis (`geometry_view` builds a `GeometryView` from a
checkpoint); this module only draws them: the summary table, per-class weight norm along the
class ranks (head -> tail, integer ticks, shot-group boundaries), the distribution of pairwise
cosines, and one cosine heat map per checkpoint (per head for a checkpoint with several),
shown as B x B block means when C is larger than svg.HEATMAP_CELLS, which the page states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lwrcli.use import html_page, svg

TITLE_NAMES = 70  # a caption lists the checkpoints up to this length, else counts them
HIST_BINS = 80  # over [-1, 1]: bins 0.025 wide; fewer for few pairs (hist_bins)


def hist_bins(classes: int) -> int:
    """80 bins over [-1, 1], 40 under 5,000 pairs and 20 under 500 (a smooth outline)."""
    pairs = classes * (classes - 1) // 2
    return 20 if pairs < 500 else 40 if pairs < 5000 else HIST_BINS


@dataclass
class GeometryView:
    """One checkpoint's geometry, ready to draw.

    counts: (C,) train images per class id; stats: `analysis.weight_stats` (plus
    `expert_stats`) without the cosine matrix; maps: (head name, shown matrix, block size B)
    with rows and columns ordered head -> tail ('' for a one-head model); density: (bins,)
    density of the pairwise cosines of the first head over [-1, 1] (`cosine_density`)."""

    label: str
    counts: list[int]
    stats: dict[str, Any]
    maps: list[tuple[str, np.ndarray, int]]
    density: np.ndarray
    color: int = 0
    bounds: list[tuple[str, int]] = field(default_factory=list)


def cosine_density(mat: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Density (bins,) over [-1, 1] of the cosines of every pair i != j of the symmetric
    (C, C) `mat`: the whole matrix's histogram less its diagonal, so no (C^2 / 2)-index array
    or copy of the matrix is built (the same density as over the pairs i < j, each pair
    counting twice). `bins` None: `hist_bins(C)`."""
    c = mat.shape[0]
    edges = np.linspace(-1.0, 1.0, (bins or hist_bins(c)) + 1)
    counts = np.zeros(len(edges) - 1)
    for a in range(0, c, 512):  # 512 rows at a time: no (C, C) copy
        counts += np.histogram(np.clip(mat[a : a + 512], -1.0, 1.0), bins=edges)[0]
    counts -= np.histogram(np.clip(np.diag(mat), -1.0, 1.0), bins=edges)[0]
    pairs = c * (c - 1)
    return counts / (pairs * (edges[1] - edges[0])) if pairs else counts


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _theta(theta: Any) -> str:
    return theta if isinstance(theta, str) else f"{theta:g}"


def _row(label: str, c: int, s: dict[str, Any]) -> str:
    r = s["r_lwr"]
    cells = [
        str(c),
        _fmt(s["overall"]["mean"]),
        _fmt(s["overall"]["max"]),
        f"{r['value']:.4g} (θ={_theta(r['theta'])})",
        _fmt(s["norm_ratio_head_tail"]),
        _fmt(s["norm_ratio_top_bottom"]),
        _fmt(s["norm_count_corr"]),
    ]
    return (
        f'<tr><td class="text">{svg.esc(label)}</td>'
        + "".join(f"<td>{x}</td>" for x in cells)
        + "</tr>"
    )


HEAD = (
    "checkpoint",
    "C",
    "mean cos",
    "max cos",
    "R_LWR",
    "norm many/few",
    "norm top/bottom 10%",
    "corr(norm, log count)",
)


def summary_table(views: Sequence[GeometryView]) -> str:
    rows, notes = [], []
    for v in views:
        rows.append(_row(v.label, len(v.counts), v.stats))
        for x in v.stats.get("experts", []):
            rows.append(_row(f"{v.label} · expert {x['expert']}", len(v.counts), x))
        if v.stats.get("expert_pairs"):
            notes.append(
                f"{v.label}: cosine between experts' vectors of the same class "
                f"{v.stats['expert_same_class_cos']:.3f} (mean over classes and expert pairs)."
            )
    extra = "".join(f'<p class="note">{svg.esc(n)}</p>' for n in notes)
    return html_page.table(HEAD, rows, "geometry-table") + extra


def _shared_bounds(views: Sequence[GeometryView]) -> list[tuple[float, str]]:
    """The shot-group boundaries along the ranks, when every checkpoint has the same ones."""
    first = views[0].bounds
    if any(v.bounds != first for v in views):
        return []
    return [(pos - 0.5, name) for name, pos in first if pos > 0]


def charts(views: Sequence[GeometryView]) -> str:
    """Norms along the ranks and the cosine densities, every checkpoint overlaid."""
    norms = []
    for v in views:
        order = np.argsort(-np.asarray(v.counts), kind="stable")
        values = np.asarray(v.stats["norms"])[order]
        norms.append(svg.Series(v.label, np.arange(len(values)), values.tolist(), v.color))
    norm_svg = svg.line_chart(
        "Classifier weight norm per class, classes ranked by train images (head → tail)",
        norms,
        "class rank by train images (head → tail)",
        "weight norm ‖w_c‖",
        int_x=True,
        vlines=_shared_bounds(views),
    )
    dens = []
    for v in views:
        edges = np.linspace(-1, 1, len(v.density) + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        dens.append(svg.Series(v.label, centres.tolist(), v.density.tolist(), v.color))
    hist_svg = svg.line_chart(
        "Distribution of pairwise cosines of class vectors (density over pairs i ≠ j)",
        dens,
        "pairwise cosine of class vectors",
        "density",
        y_range=(0.0, None),
    )
    which = ", ".join(v.label for v in views)
    if len(which) > TITLE_NAMES:
        which = f"{len(views)} checkpoints (colours as in the legend)"
    return (
        '<div class="grid wide">'
        + html_page.figure(f"Weight norm along the tail: {which}", norm_svg)
        + html_page.figure(f"Pairwise cosines: {which}", hist_svg)
        + "</div>"
    )


def heatmaps(views: Sequence[GeometryView]) -> str:
    """One heat map per checkpoint (per head), side by side."""
    figs = []
    for v in views:
        c = len(v.counts)
        for name, shown, step in v.maps:
            who = f"{v.label} · {name}" if name else v.label
            title = f"Cosines of class vectors, classes ordered head → tail: {who}"
            chart = svg.heatmap(title, shown, c, step, v.bounds, "class rank (head → tail)")
            if step > 1:
                detail = f"shown as {step}×{step} block means of the {c}×{c} map"
            else:
                detail = f"all {c}×{c} cosines"
            figs.append(html_page.figure(f"Cosines: {who}", chart, detail))
    return f'<div class="grid">{"".join(figs)}</div>'


def block_note(views: Sequence[GeometryView]) -> str:
    steps = {(len(v.counts), s) for v in views for _, _, s in v.maps if s > 1}
    if not steps:
        return ""
    said = "; ".join(f"shown as {s}×{s} block means of the {c}×{c} map" for c, s in sorted(steps))
    return (
        f'<p class="note">Heat maps of more than {svg.HEATMAP_CELLS} classes are drawn as '
        f"block means (each cell the mean cosine of a B×B block of classes): {said}.</p>"
    )


def section(views: Sequence[GeometryView], intro: str = "") -> str:
    """The geometry section: legend, table, norm and cosine charts, heat maps."""
    body = (
        html_page.legend([v.label for v in views])
        + summary_table(views)
        + charts(views)
        + "<h3>Cosine heat maps</h3>"
        + block_note(views)
        + heatmaps(views)
    )
    lead = intro or (
        "The classifier's class vectors: their norms against class frequency, and the "
        "cosine between every two of them (classes ordered from the most to the fewest train "
        "images; lines mark the many / medium / few boundaries). R_LWR is the regularizer's "
        "value at the run's θ."
    )
    return html_page.section("geometry", "Class-vector geometry", body, lead)
