"""Small inline-SVG charts for the self-contained HTML pages (`lwr report --html`,
`lwr analyze-weights --html`): line charts with seed bands, dot clouds and heat maps.

Why hand-written SVG and not matplotlib's: the page must open offline, stay small, keep its
text selectable and follow the reader's light or dark mode. Every colour here is a CSS class
(`s3` stroke, `f3` fill, `b3` band of palette colour 3; `frame`, `gl` grid lines, `tick`,
`label`, `mark`, `bound`, `muted-line`), so the page's
stylesheet (lwrcli.use.html_page) sets them once for both modes: Okabe-Ito's colour-blind-safe
palette, with a dash pattern added past its seven colours. Heat map cells are a palette PNG
(one pixel per cell, cividis, drawn pixelated) inside the SVG; the axes stay vector text.

Numbers and shapes: x, y are data coordinates; a chart's viewBox is W x H units and scales
to its column (the page sets `width: 100%`), so nothing here depends on the screen.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Okabe-Ito's colour-blind-safe palette (Okabe & Ito 2008) without black (the text colour),
# yellow last (faint on white); in dark mode blue, green, vermillion and purple are lightened
# to keep their contrast. Past these seven, colours repeat with a dash pattern.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")
PALETTE_DARK = ("#4FA3E0", "#E69F00", "#2DBE8F", "#F26B2A", "#56B4E9", "#E08FC0", "#F0E442")
W, H = 400, 270  # line charts, viewBox units
LEFT, RIGHT, TOP, BOTTOM = 54, 12, 12, 42
COLORS = len(PALETTE)  # colours before dashes repeat them
DASHES = ("", "7 3", "2 3", "9 3 2 3")
MAX_POINTS = 600  # a longer line keeps each bucket's min and max (its envelope)
HEATMAP_CELLS = 128  # a larger C x C map is shown as block means of at most this many cells


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Series:
    """One line (or dot cloud) of a chart. `lo`/`hi`: a band (seeds' min-max) around it."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    color: int = 0
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None
    dots: bool = False  # a marker at every point (few points, or a cloud without `line`)
    line: bool = True
    dash: str | None = None  # None: from the colour index (past the seven colours)
    faint: bool = False  # a reference drawn in the muted colour (a baseline)


def nice_step(span: float, n: int = 5, integer: bool = False) -> float:
    """A round tick step (1, 2, 2.5, 5 x 10^k) giving about `n` ticks over `span`."""
    raw = max(span, 1e-12) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * 0.999)
    if integer:
        step = max(1.0, float(round(step)) if step >= 1 else 1.0)
        if step == 2.5:
            step = 2.0
    return step


def ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """Round values in [lo, hi]; integers only when `integer` (class ranks, epochs)."""
    step = nice_step(hi - lo, n, integer)
    first = math.ceil(lo / step - 1e-9) * step
    out, k = [], 0
    while first + k * step <= hi + step * 1e-9:
        out.append(round(first + k * step, 10))
        k += 1
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi], with 2x and 5x added when fewer than three fit."""
    lo, hi = max(lo, 1e-12), max(hi, 1e-12)
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    out = [10.0**k for k in decades if lo <= 10.0**k <= hi * (1 + 1e-9)]
    if len(out) < 3:
        out = sorted(
            m * 10.0**k for k in decades for m in (1, 2, 5) if lo <= m * 10.0**k <= hi * 1.000001
        )
    return out


def tick_text(v: float, step: float) -> str:
    """`v` with as many decimals as the tick step needs (0.25 -> 2, 5 -> 0)."""
    digits = 0
    while digits < 6 and abs(round(step * 10**digits) - step * 10**digits) > 1e-6:
        digits += 1
    return f"{v:.{digits}f}"


def envelope(x: np.ndarray, y: np.ndarray, points: int = MAX_POINTS) -> tuple[np.ndarray, ...]:
    """At most `points` points of a long line: each bucket's min and max in x order, so spikes
    stay visible (what a plotting library does when it draws more points than pixels)."""
    n = len(x)
    if n <= points:
        return x, y
    edges = np.linspace(0, n, points // 2 + 1).astype(int)
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = y[a:b]
        if not len(seg) or np.all(np.isnan(seg)):
            continue
        i, j = sorted((int(np.nanargmin(seg)), int(np.nanargmax(seg))))
        for k in dict.fromkeys((i, j)):
            xs.append(x[a + k])
            ys.append(y[a + k])
    return np.asarray(xs), np.asarray(ys)


class Frame:
    """The data-to-viewBox mapping of one chart, and its axes as SVG text."""

    def __init__(
        self,
        x: tuple[float, float],
        y: tuple[float, float],
        log_x: bool = False,
        size: tuple[int, int] = (W, H),
        margins: tuple[int, int, int, int] = (LEFT, RIGHT, TOP, BOTTOM),
    ) -> None:
        self.w, self.h = size
        self.left, self.right, self.top, self.bottom = margins
        self.log_x = log_x
        x0, x1 = (math.log10(max(v, 1e-12)) for v in x) if log_x else x
        self.x0, self.x1 = (x0, x1) if x1 > x0 else (x0 - 0.5, x0 + 0.5)
        self.y0, self.y1 = y if y[1] > y[0] else (y[0] - 0.5, y[0] + 0.5)

    def px(self, x: float) -> float:
        v = math.log10(max(x, 1e-12)) if self.log_x else x
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        span = self.h - self.top - self.bottom
        return self.top + (1 - (y - self.y0) / (self.y1 - self.y0)) * span

    def axes(self, x_label: str, y_label: str, int_x: bool = False, int_y: bool = False) -> str:
        """Grid lines, tick labels and axis titles; integer ticks where asked (ranks)."""
        lo_x, hi_x = (10**self.x0, 10**self.x1) if self.log_x else (self.x0, self.x1)
        xt = log_ticks(lo_x, hi_x) if self.log_x else ticks(lo_x, hi_x, 5, int_x)
        yt = ticks(self.y0, self.y1, 4, int_y)
        x_step = nice_step(hi_x - lo_x, 5, int_x)
        y_step = nice_step(self.y1 - self.y0, 4, int_y)
        bottom, right = self.h - self.bottom, self.w - self.right
        out = [
            f'<rect class="frame" x="{self.left}" y="{self.top}" '
            f'width="{right - self.left}" height="{bottom - self.top}"/>'
        ]
        for v in yt:
            y = self.py(v)
            out.append(
                f'<line class="gl" x1="{self.left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            )
            out.append(
                f'<text class="tick" x="{self.left - 5}" y="{y + 4:.1f}" '
                f'text-anchor="end">{tick_text(v, y_step)}</text>'
            )
        for v in xt:
            x = self.px(v)
            label = f"{v:g}" if self.log_x else tick_text(v, x_step)
            out.append(
                f'<line class="gl" x1="{x:.1f}" x2="{x:.1f}" y1="{self.top}" y2="{bottom}"/>'
            )
            out.append(
                f'<text class="tick" x="{x:.1f}" y="{bottom + 15}" '
                f'text-anchor="middle">{label}</text>'
            )
        mid_x, mid_y = (self.left + right) / 2, (self.top + bottom) / 2
        out.append(
            f'<text class="label" x="{mid_x:.1f}" y="{self.h - 8}" '
            f'text-anchor="middle">{esc(x_label)}</text>'
        )
        out.append(
            f'<text class="label" transform="translate(14 {mid_y:.1f}) rotate(-90)" '
            f'text-anchor="middle">{esc(y_label)}</text>'
        )
        return "".join(out)

    def path(self, x: Sequence[float], y: Sequence[float | None]) -> str:
        """`M x,y x,y ...` with a new subpath after every missing value."""
        parts, run = [], []
        for a, b in zip(x, y):
            if b is None or not math.isfinite(b) or (self.log_x and a <= 0):
                if run:
                    parts.append("M" + " ".join(run))
                run = []
                continue
            run.append(f"{self.px(a):.1f},{self.py(b):.1f}")
        if run:
            parts.append("M" + " ".join(run))
        return "".join(parts)


def _dash(s: Series) -> str:
    dash = s.dash if s.dash is not None else DASHES[(s.color // COLORS) % len(DASHES)]
    return f' stroke-dasharray="{dash}"' if dash else ""


def _range(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    span = hi - lo or abs(hi) or 1.0
    return lo - pad * span, hi + pad * span


def line_chart(
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    *,
    int_x: bool = False,
    int_y: bool = False,
    log_x: bool = False,
    y_range: tuple[float | None, float | None] = (None, None),
    vlines: Sequence[tuple[float, str]] = (),
) -> str:
    """An `<svg>` with every series drawn (band, line, dots), titled `title` (its <title>,
    for screen readers and tooltips; the page shows the same words as the figure caption).
    `vlines`: (x, label) markers such as the shot-group boundaries along the class ranks."""
    xs = [float(v) for s in series for v in s.x]
    ys = [v for s in series for v in [*s.y, *(s.lo or ()), *(s.hi or ())] if v is not None]
    if log_x:
        xs = [v for v in xs if v > 0]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_lo, y_hi = _range(ys)
    y_lo = y_range[0] if y_range[0] is not None else y_lo
    y_hi = y_range[1] if y_range[1] is not None else y_hi
    frame = Frame((x_lo, x_hi), (y_lo, y_hi), log_x)
    out = [_open(frame.w, frame.h, title), frame.axes(x_label, y_label, int_x, int_y)]
    for x, label in vlines:
        px = frame.px(x)
        out.append(
            f'<line class="mark" x1="{px:.1f}" x2="{px:.1f}" y1="{frame.top}" '
            f'y2="{frame.h - frame.bottom}"/><text class="tick" x="{px + 3:.1f}" '
            f'y="{frame.top + 11}">{esc(label)}</text>'
        )
    for s in series:
        k = s.color % COLORS
        if s.lo is not None and s.hi is not None:
            band = [(a, lo, hi) for a, lo, hi in zip(s.x, s.lo, s.hi) if lo is not None]
            if len(band) > 1:
                top = frame.path([b[0] for b in band], [b[2] for b in band])
                low = frame.path([b[0] for b in reversed(band)], [b[1] for b in reversed(band)])
                out.append(f'<path class="b{k}" d="{top} L{low[1:]}Z"/>')
        x, y = np.asarray(s.x, float), np.asarray([np.nan if v is None else v for v in s.y], float)
        if s.line and len(x) > 1:
            lx, ly = envelope(x, y)
            cls = "muted-line" if s.faint else f"s{k}"
            out.append(f'<path class="{cls}"{_dash(s)} d="{frame.path(lx, ly)}"/>')
        if s.dots or len(x) == 1:
            cls = "muted-fill" if s.faint else f"f{k}"
            r = 1.8 if not s.line else 2.4
            dots = "".join(
                f'<circle cx="{frame.px(a):.1f}" cy="{frame.py(b):.1f}" r="{r}"/>'
                for a, b in zip(x, y)
                if math.isfinite(b) and (a > 0 or not log_x)
            )
            out.append(f'<g class="{cls}">{dots}</g>')
    out.append("</svg>")
    return "".join(out)


def _open(w: int, h: int, title: str) -> str:
    return f'<svg class="chart" viewBox="0 0 {w} {h}" role="img"><title>{esc(title)}</title>'


def block_means(
    mat: np.ndarray, cells: int, order: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """The (C, C) `mat`, rows and columns taken in `order` (None: as they are), averaged in
    B x B blocks, B = ceil(C / cells), so at most `cells` rows remain; returns (the shown
    matrix, B). A last block row/column averages the classes left over (fewer than B). Built
    one block row at a time: memory O(B x C), never a reordered (C, C) copy (530 MB in
    float64 at C = 8,142)."""
    c = mat.shape[0]
    step = -(-c // cells)  # ceil
    if step == 1:
        return (mat if order is None else mat[np.ix_(order, order)]), 1
    idx = np.arange(c) if order is None else np.asarray(order)
    starts = np.arange(0, c, step)
    widths = np.diff(np.append(starts, c))  # classes in each block: B, ..., B, the rest
    out = np.empty((len(starts), len(starts)))
    for i, a in enumerate(starts):
        rows = mat[idx[a : a + step]][:, idx]  # (<= B, C)
        out[i] = np.add.reduceat(rows.sum(0), starts) / (rows.shape[0] * widths)
    return out, step


def _cividis(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: matplotlib's cividis, designed to read the same with colour-blind
    vision (Nuñez et al. 2018)."""
    from matplotlib import colormaps

    return (colormaps["cividis"](np.linspace(0, 1, n))[:, :3] * 255 + 0.5).astype(np.uint8)


def palette_png(values: np.ndarray, vmin: float, vmax: float) -> bytes:
    """values (h, w) -> a palette PNG, one pixel per value through cividis on [vmin, vmax]."""
    from PIL import Image

    lut = _cividis()
    scaled = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / (vmax - vmin), 0, 1)
    image = Image.fromarray(np.rint(scaled * 255).astype(np.uint8), mode="P")
    image.putpalette(lut.tobytes())
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def heatmap(
    title: str,
    shown: np.ndarray,
    c: int,
    step: int,
    bounds: Sequence[tuple[str, int]],
    axis_label: str,
    vmin: float = -1.0,
    vmax: float = 1.0,
    bar_label: str = "cosine",
) -> str:
    """An `<svg>` of a (C, C) matrix given as `shown` (itself, or its `block_means` with block
    size `step`), rows and columns in the order the axes name: integer ticks in class
    positions 0 .. C-1 (a last, partial block is cut at C, as its classes end there), the
    shot-group boundaries `bounds` ((name, first position)) as lines; the colour bar uses the
    gradient of `defs()`, which the page holds once."""
    png = base64.b64encode(palette_png(shown, vmin, vmax)).decode("ascii")
    left, top, side = 52, 16, 270
    w, h = left + side + 78, top + side + 44

    def pos(p: float) -> float:  # class position p (0 .. C-1) -> the centre of its cell
        return (p + 0.5) * side / c

    span = shown.shape[0] * step  # class positions the image covers (>= C)
    out = [_open(w, h, title)]
    # A nested <svg> in class units clips what lies past position C.
    out.append(
        f'<svg x="{left}" y="{top}" width="{side}" height="{side}" viewBox="0 0 {c} {c}" '
        f'preserveAspectRatio="none"><image width="{span}" height="{span}" '
        'preserveAspectRatio="none" style="image-rendering:pixelated" '
        f'href="data:image/png;base64,{png}"/></svg>'
    )
    tstep = nice_step(max(c - 1, 1), 5, True)
    for v in ticks(0, max(c - 1, 0), 5, integer=True):
        label = tick_text(v, tstep)
        out.append(
            f'<text class="tick" x="{left + pos(v):.1f}" y="{top + side + 14}" '
            f'text-anchor="middle">{label}</text><text class="tick" x="{left - 4}" '
            f'y="{top + pos(v) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for name, first in bounds:
        p = pos(first - 0.5)
        if first > 0:
            out.append(
                f'<line class="bound" x1="{left + p:.1f}" x2="{left + p:.1f}" y1="{top}" '
                f'y2="{top + side}"/><line class="bound" x1="{left}" x2="{left + side}" '
                f'y1="{top + p:.1f}" y2="{top + p:.1f}"/>'
            )
        out.append(f'<text class="tick" x="{left + p + 2:.1f}" y="{top - 3}">{esc(name)}</text>')
    out.append(
        f'<text class="label" x="{left + side / 2:.1f}" y="{h - 8}" '
        f'text-anchor="middle">{esc(axis_label)}</text>'
    )
    out.append(
        f'<text class="label" transform="translate(13 {top + side / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{esc(axis_label)}</text>'
    )
    out.append(_colorbar(left + side + 14, top, side, vmin, vmax, bar_label))
    out.append("</svg>")
    return "".join(out)


GRADIENT = "cividis-bar"


def defs() -> str:
    """The page's one hidden `<svg>` with what several charts share: the cividis gradient
    of the heat maps' colour bars (vmax at the top)."""
    stops = "".join(
        f'<stop offset="{k / 10:.1f}" stop-color="#{"".join(f"{v:02x}" for v in rgb)}"/>'
        for k, rgb in enumerate(_cividis(11)[::-1])
    )
    return (
        f'<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
        f'<linearGradient id="{GRADIENT}" x1="0" x2="0" y1="0" y2="1">{stops}'
        "</linearGradient></defs></svg>"
    )


def _colorbar(x: float, y: float, height: float, vmin: float, vmax: float, label: str) -> str:
    """A vertical colour bar (the page's cividis gradient, vmax at the top), ticks, label."""
    out = [
        f'<rect x="{x}" y="{y}" width="12" height="{height}" fill="url(#{GRADIENT})" class="bar"/>'
    ]
    step = nice_step(vmax - vmin, 4)
    for v in ticks(vmin, vmax, 4):
        ty = y + (vmax - v) / (vmax - vmin) * height
        out.append(f'<text class="tick" x="{x + 16}" y="{ty + 4:.1f}">{tick_text(v, step)}</text>')
    out.append(
        f'<text class="label" transform="translate({x + 52} {y + height / 2:.1f}) '
        f'rotate(90)" text-anchor="middle">{esc(label)}</text>'
    )
    return "".join(out)
