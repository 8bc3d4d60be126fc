"""`lwr report --html`: the whole study on one self-contained page.

The results table (the numbers of `lwr report --json`: mean ± std over seeds, Δ to the
baseline, the paper's number, paper-only rows marked), training curves per group, per-class
accuracy against class frequency, the geometry of one seed per group (what `analyze-weights`
shows), each run's settings that differ from the baseline's (folded), and the command that
made each run. The shell, stylesheet and writing rule are lwrcli.use.html_page's; the
figures lwrcli.studies.report_charts'.

Every measured cell carries its exact value in `data-*` attributes (`data-mean`,
`data-std`, `data-value`, Python's repr: it reads back as the same float), so a script (and
the test) can check the page against `lwr report --json` without parsing the rounded text.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lwrcli.runtime.runname import SWEEP_FILE, run_name, sweep_root
from lwrcli.studies import paper_rows, report_charts
from lwrcli.studies.report import HEADERS, METRICS, _seedless, acting, flatten
from lwrcli.studies.report_render import notes, rows
from lwrcli.use import geometry_html, html_page
from lwrcli.use.svg import esc

DELTAS = ("top1", "many", "medium", "few")


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _cell(key: str, stat: dict[str, Any]) -> str:
    mean, std = stat["mean"], stat["std"]
    text = "–" if mean is None else f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")
    return f'<td data-key="{key}" data-mean="{_num(mean)}" data-std="{_num(std)}">{text}</td>'


def _signed(key: str, v: float | None) -> str:
    cls = "" if v is None or v == 0 else (' class="pos"' if v > 0 else ' class="neg"')
    text = "–" if v is None else f"{v:+.2f}"
    return f'<td data-key="{key}" data-value="{_num(v)}"{cls}>{text}</td>'


HEAD = [
    "group", "n", *(HEADERS[m] for m in METRICS), *(f"Δ {HEADERS[m]}" for m in DELTAS),
    "paper All", "vs paper",
]  # fmt: skip


def results_table(report: dict[str, Any]) -> str:
    """The table of `lwr report`, paper-only rows placed as there, with its notes."""
    body = []
    for r in rows(report):
        base = r["group"] == report["baseline"]
        badge = '<span class="badge">baseline</span>' if base else ""
        paper = r["paper_top1"]
        body.append(
            f'<tr data-group="{esc(r["group"])}"{" class=base" if base else ""}>'
            f'<td class="text">{esc(r["group"])}{badge}</td>'
            f'<td data-key="n" data-value="{r["n"]}">{r["n"]}</td>'
            + "".join(_cell(m, r[m]) for m in METRICS)
            + "".join(_signed(f"delta_{m}", r[f"delta_{m}"]) for m in DELTAS)
            + f'<td data-key="paper_top1" data-value="{_num(paper)}">'
            f"{'–' if paper is None else f'{paper:.1f}'}</td>"
            + _signed("vs_paper_top1", r["vs_paper_top1"])
            + "</tr>"
        )
    width = len(HEAD)

    def paper_row(p: dict[str, Any]) -> str:
        ref = p["reference"]
        cells = ["<td>–</td>"] * (width - 3)
        all_ = ref.get("all")
        return (
            f'<tr class="paper" data-paper="{esc(p["name"])}" title="{esc(p["source"])}">'
            f'<td class="text">{esc(p["name"])}<span class="badge">{esc(paper_rows.MARK)}'
            f"</span></td>{''.join(cells)}"
            f'<td data-key="paper_top1" data-value="{_num(all_)}">'
            f"{'–' if all_ is None else f'{all_:.1f}'}</td><td>–</td></tr>"
        )

    placed = paper_rows.placed(body, report["groups"], report.get("paper_only", []), paper_row)
    lines = [x for x in notes(report).splitlines() if x.strip()]
    text = "".join(f'<p class="note">{esc(x)}</p>' for x in lines)
    return html_page.table(HEAD, placed, "results-table") + text


# ---------------------------------------------------------------------------------------------
# Settings and commands


def _baseline_index(report: dict[str, Any]) -> int | None:
    labels = [g.label for g in report["groups"]]
    return labels.index(report["baseline"]) if report["baseline"] in labels else None


def _value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v


def _diff_rows(a: dict[str, Any], b: dict[str, Any], keys: Iterable[str]) -> list[str]:
    missing = "(not set)"
    return [
        f'<tr><td class="text"><code>{esc(k)}</code></td>'
        f'<td class="text">{esc(_value(a[k]) if k in a else missing)}</td>'
        f'<td class="text">{esc(_value(b[k]) if k in b else missing)}</td></tr>'
        for k in keys
    ]


def settings_section(report: dict[str, Any]) -> str:
    """Per group, folded: the settings that change training and differ from the baseline's,
    then per run what else differs (seed, device, logging: settings that train the same)."""
    groups = report["groups"]
    bi = _baseline_index(report)
    base = groups[bi if bi is not None else 0]
    base_run = base.runs[0]
    base_acting = _seedless(acting(base.config))
    base_flat = flatten(base_run.config)
    against = "the baseline" if bi is not None else f"the first group ({base.label})"
    out = []
    for g in groups:
        mine = _seedless(acting(g.config))
        keys = sorted(k for k in {*mine, *base_acting} if mine.get(k) != base_acting.get(k))
        keys = [k for k in keys if k != "name"]
        head = ["setting", base.label, g.label]
        if g is base:
            summary = (
                f"{g.label}: the baseline" if bi is not None else f"{g.label}: compared against"
            )
            table = f"<pre>{esc(_yaml(base_run.config))}</pre>"
        else:
            summary = f"{g.label}: {len(keys)} setting{'s' * (len(keys) != 1)} differ"
            table = (
                html_page.table(head, _diff_rows(base_acting, mine, keys))
                if keys
                else '<p class="note">No setting that changes training differs.</p>'
            )
        runs = []
        for run in g.runs:
            flat = flatten(run.config)
            other = sorted(
                k for k in {*flat, *base_flat}
                if flat.get(k) != base_flat.get(k) and k not in keys and k != "name"
            )  # fmt: skip
            text = ", ".join(
                f"{k}: {_value(base_flat.get(k))} → {_value(flat.get(k))}" for k in other
            )
            runs.append(
                f"<li><code>{esc(run_name(run.path))}</code> ({esc(str(run.path))})"
                f"{': ' + esc(text) if text else ''}</li>"
            )
        out.append(
            f"<details><summary>{esc(summary)}</summary>{table}"
            f'<p class="note">Runs, and what else differs from {esc(base_run.path.name)} of '
            "the baseline (settings that train the same, and the seed):</p>"
            f"<ul>{''.join(runs)}</ul></details>"
        )
    intro = (
        f"Settings compared with {against}'s resolved config.yaml; fold a group open to see "
        "them. The baseline's own group shows its whole config."
    )
    return html_page.section(
        "settings", "Settings: each run against the baseline", "".join(out), intro
    )


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def recorded_command(run_dir: Path) -> str | None:
    """The command line recorded in the run's environment.json (`lwr ...`), or None."""
    try:
        argv = json.loads((run_dir / "environment.json").read_text(encoding="utf-8"))["argv"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(argv, list) or not argv:
        return None
    argv = [str(a) for a in argv]
    if Path(argv[0]).name == "lwr" or argv[0].endswith("lwrcli/__main__.py"):
        argv[0] = "lwr"
    return shlex.join(argv)


def train_command(run_dir: Path) -> str | None:
    """The `lwr train` line that makes this run alone, from its sweep's sweep.json (the line
    plan.sh holds), or None outside a sweep."""
    from lwrcli.studies.sweep_launch import train_command as sweep_train_command

    root = sweep_root(run_dir)
    if root is None:
        return None
    try:
        record = json.loads((root / SWEEP_FILE).read_text(encoding="utf-8"))
        name = run_name(run_dir)
        entry = next(r for r in record.get("runs", []) if r.get("name") == name)
        planned = SimpleNamespace(
            preset=entry.get("preset"), config=entry.get("config"),
            data=entry["data"], overrides=list(entry.get("overrides", [])),
        )  # fmt: skip
        return shlex.join(["lwr", *sweep_train_command(planned, run_dir)])  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def commands_section(report: dict[str, Any]) -> str:
    out = []
    for g in report["groups"]:
        by_command: dict[str, list[str]] = {}
        alone = []
        for run in g.runs:
            cmd = recorded_command(run.path) or "(not recorded: no environment.json)"
            by_command.setdefault(cmd, []).append(run_name(run.path))
            line = train_command(run.path)
            if line is not None:
                alone.append(
                    f"<li><code>{esc(run_name(run.path))}</code><pre>{esc(line)}</pre></li>"
                )
        made = "".join(
            f'<p class="note">Made {esc(", ".join(names))} by:</p><pre>{esc(cmd)}</pre>'
            for cmd, names in by_command.items()
        )
        single = f"<p class=note>Each run alone:</p><ul>{''.join(alone)}</ul>" if alone else ""
        out.append(f"<h3>{esc(g.label)}</h3>{made}{single}")
    intro = (
        "The command line each run recorded (environment.json), and for a run of a sweep the "
        "`lwr train` line that makes it alone (as the sweep's plan.sh would)."
    )
    return html_page.section("commands", "Commands", "".join(out), intro)


# ---------------------------------------------------------------------------------------------
# The page


def render_html(report: dict[str, Any]) -> str:
    groups = report["groups"]
    n_runs = sum(len(g.runs) for g in groups)
    views, counts, missing = [], [], []
    for k, g in enumerate(groups):
        view, c, why = report_charts.group_geometry(g, k)
        counts.append(c)
        if view is not None:
            views.append(view)
        if why:
            missing.append(why)
    split = "test" if report["split"] == "test" else "validation"
    results_intro = "Greyed rows hold a published number only, nothing measured here." * bool(
        report.get("paper_only")
    )
    sections = [
        html_page.section("results", "Results", results_table(report), results_intro),
        html_page.section(
            "curves", "Training curves per group", report_charts.curves(report),
            "Each line is the mean over a group's seeds; the band spans their min and max.",
        ),
        html_page.section(
            "per-class", "Per-class accuracy against class frequency",
            report_charts.per_class_section(report, counts, _baseline_index(report)),
            f"Each class's {split} top-1 % (mean over the group's seeds) against its train "
            "images, at the scored epoch.",
        ),
    ]  # fmt: skip
    note = "".join(f'<p class="note">Geometry left out: {esc(m)}.</p>' for m in missing)
    if views:
        intro = (
            "One seed per group (its scored checkpoint): the classifier's class vectors, "
            "their norms against class frequency and the cosine between every two of them, "
            "classes ordered from the most to the fewest train images."
        )
        geo = geometry_html.section(views, intro)
        sections.append(geo.replace("</h2>", "</h2>" + note, 1) if note else geo)
    elif note:
        sections.append(html_page.section("geometry", "Class-vector geometry", note))
    sections += [settings_section(report), commands_section(report)]
    names = [("results", "Results"), ("curves", "Curves"), ("per-class", "Per-class")]
    names += [("geometry", "Geometry"), ("settings", "Settings"), ("commands", "Commands")]
    title = f"lwr report: {report_charts.subject(groups)} ({len(groups)} groups, {n_runs} runs)"
    return html_page.page(title, "".join(sections), names)


def write_report_html(
    report: dict[str, Any], path: Path, overwrite: bool = False, inputs: Iterable[Path] = ()
) -> Path:
    """The page at `path` (.html), at the umask's mode, never replacing a file without
    `overwrite` (lwrcli.use.html_page)."""
    inputs = list(inputs)
    html_page.check_html_path(path, overwrite, inputs)
    return html_page.write_html(path, render_html(report), overwrite, inputs)
