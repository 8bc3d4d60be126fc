"""One self-contained HTML page: the shell, stylesheet and writing rule shared by
`lwr report --html` and `lwr analyze-weights --html`.

The page opens offline in any browser and can be mailed as one file: no script, no web font,
no link to anything outside it (figures are inline SVG, heat-map cells data: PNGs). It reads
at 1280 px and at a phone's 400 px (figures in a grid of columns at least 300 px wide, wide
tables scroll sideways), follows the reader's light or dark mode (prefers-color-scheme), and
its colours are Okabe-Ito's colour-blind-safe palette (Okabe & Ito 2008; blue and purple
lightened in dark mode so they keep their contrast).

Like every lwr output it follows the umask and is never replaced without --overwrite
(`check_html_path` before the work, `write_html` at the end, through lwrcli.runtime.files).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from lwrcli import __version__
from lwrcli.errors import UserError
from lwrcli.runtime.files import write_atomic
from lwrcli.use.svg import COLORS, DASHES, PALETTE, PALETTE_DARK, defs, esc

SUFFIXES = (".html", ".htm")


def _series_css() -> str:
    rules = []
    for k in range(COLORS):
        rules.append(
            f".s{k}{{stroke:var(--c{k})}}.f{k}{{fill:var(--c{k})}}.b{k}{{fill:var(--c{k});"
            "opacity:.18}"
        )
    light = ";".join(f"--c{k}:{c}" for k, c in enumerate(PALETTE))
    dark = ";".join(f"--c{k}:{c}" for k, c in enumerate(PALETTE_DARK))
    return f":root{{{light}}}@media (prefers-color-scheme:dark){{:root{{{dark}}}}}" + "".join(rules)


CSS = """
:root{color-scheme:light dark;--bg:#ffffff;--fg:#1d1f23;--muted:#5d636b;--line:#d5d8dc;
--grid:#eceef0;--card:#f6f7f8;--accent:#0072B2;--good:#00734f;--bad:#b34700}
@media (prefers-color-scheme:dark){:root{--bg:#15171a;--fg:#e6e8eb;--muted:#a0a6ad;
--line:#3a3f45;--grid:#262a2f;--card:#1d2024;--accent:#56B4E9;--good:#3fc99a;--bad:#ff8a4c}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:16px 20px 48px}
h1{font-size:1.45rem;margin:.2em 0 .3em}h2{font-size:1.2rem;margin:1.6em 0 .4em;
border-bottom:1px solid var(--line);padding-bottom:.2em}h3{font-size:1rem;margin:1em 0 .3em}
p,li{max-width:80ch}.muted,.note{color:var(--muted)}.note{font-size:.9rem}
nav{display:flex;flex-wrap:wrap;gap:.3em 1em;font-size:.95rem}a{color:var(--accent)}
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px 10px;
overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere;margin:.3em 0 .8em}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:.4em 0}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;background:var(--card)}th:first-child,td:first-child{text-align:left}
td.text{text-align:left;white-space:normal}
tr.paper td{color:var(--muted);font-style:italic}tr.base td:first-child{font-weight:600}
.pos{color:var(--good)}.neg{color:var(--bad)}
.badge{display:inline-block;font-size:.75rem;font-style:normal;border:1px solid var(--line);
border-radius:4px;padding:0 4px;margin-left:4px;color:var(--muted)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px 18px}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(340px,1fr))}
figure{margin:0;min-width:0}figcaption{font-size:.9rem;margin:0 0 2px;font-weight:600}
figcaption .muted{font-weight:400}
svg.chart{width:100%;height:auto;display:block;overflow:visible}
svg text{fill:var(--fg);font-family:inherit}svg .tick{font-size:11px;fill:var(--muted)}
svg .label{font-size:12px}svg .frame{fill:none;stroke:var(--line)}
svg .gl{stroke:var(--grid)}svg .mark{stroke:var(--muted);stroke-dasharray:3 3}
svg .bound{stroke:#ffffff;stroke-width:1.2}svg .bar{stroke:var(--line)}
svg path{fill:none;stroke-width:1.8;stroke-linejoin:round}svg path[class^="b"]{stroke:none}
svg .muted-line{stroke:var(--muted)}svg .muted-fill{fill:var(--muted);opacity:.8}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:.4em 0 .8em;font-size:.9rem}
.legend span{display:inline-flex;align-items:center;gap:6px}.legend svg{width:28px;height:10px}
.legend path{stroke-width:3}
details{border:1px solid var(--line);border-radius:6px;padding:6px 10px;margin:.4em 0}
summary{cursor:pointer;font-weight:600}
@media (max-width:560px){main{padding:10px 10px 32px}body{font-size:14px}
.grid,.grid.wide{grid-template-columns:1fr}th,td{padding:3px 6px}}
"""


def check_html_path(path: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> Path:
    """Refuse, before any work, a page path lwr may not write: not .html/.htm (an --overwrite
    must never replace a checkpoint or a config by a typo), a folder, one of the command's
    inputs, or an existing file without `overwrite`. Returns the path."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--html {path}: give a file name ending in .html (or .htm).")
    if path.is_dir():
        raise UserError(f"--html {path} is a folder; give a file name ending in .html.")
    target = Path(os.path.abspath(path))
    if any(Path(os.path.abspath(p)) == target for p in inputs):
        raise UserError(f"--html {path} is one of this command's inputs; choose another file.")
    if path.exists() and not overwrite:
        raise UserError(
            f"--html {path} already exists; nothing was written. Pass --overwrite to replace "
            "it, or choose another file."
        )
    return path


def write_html(path: Path, text: str, overwrite: bool, inputs: Iterable[Path] = ()) -> Path:
    """Write the page atomically at the umask's mode (checked again: the file may have
    appeared meanwhile); a missing parent folder is created."""
    path = check_html_path(path, overwrite, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text)


def page(title: str, body: str, sections: Sequence[tuple[str, str]] = ()) -> str:
    """The whole document: `body` under a heading, a line saying what made it, and links to
    `sections` ((id, name))."""
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{esc(i)}">{esc(n)}</a>' for i, n in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{esc(title)}</title><style>{_series_css()}{CSS}</style></head><body>"
        f"{defs()}<main><h1>{esc(title)}</h1>"
        f'<p class="muted">Made by lwr {esc(__version__)} on {made}; one file, no network '
        "needed.</p>"
        f"{f'<nav>{nav}</nav>' if nav else ''}{body}</main></body></html>\n"
    )


def section(ident: str, name: str, body: str, intro: str = "") -> str:
    lead = f'<p class="note">{intro}</p>' if intro else ""
    return f'<section id="{esc(ident)}"><h2>{esc(name)}</h2>{lead}{body}</section>'


def figure(caption: str, svg: str, detail: str = "") -> str:
    """A chart with its title as an HTML caption (wraps on a phone, stays selectable)."""
    more = f' <span class="muted">{detail}</span>' if detail else ""
    return f"<figure><figcaption>{esc(caption)}{more}</figcaption>{svg}</figure>"


def legend(labels: Sequence[str], faint: str | None = None) -> str:
    """Colour k (and its dash past the seventh) for label k, as the charts draw them."""
    items = []
    for k, label in enumerate(labels):
        dash = DASHES[(k // COLORS) % len(DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        items.append(
            f'<span><svg viewBox="0 0 28 10" aria-hidden="true"><path class="s{k % COLORS}"'
            f'{dash_attr} d="M1,5 27,5"/></svg>{esc(label)}</span>'
        )
    if faint:
        items.append(
            '<span><svg viewBox="0 0 28 10" aria-hidden="true"><path class="muted-line" '
            f'stroke-dasharray="4 3" d="M1,5 27,5"/></svg>{esc(faint)}</span>'
        )
    return f'<div class="legend">{"".join(items)}</div>'


def table(head: Sequence[str], rows: Sequence[str], ident: str = "") -> str:
    """A table that scrolls sideways on a narrow screen; `rows` are ready `<tr>` strings."""
    attr = f' id="{esc(ident)}"' if ident else ""
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{cells}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
