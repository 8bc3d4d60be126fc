"""A report as text: Markdown, LaTeX, CSV or JSON tables with mean ± std, deltas and the
paper's numbers, the notes under them, and the files `lwr report --out` writes (tables,
curves). The grouping and scoring are lwrcli.studies.report's."""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lwrcli.errors import UserError
from lwrcli.runtime.results import results_folder
from lwrcli.studies import paper_rows
from lwrcli.studies.report import HEADERS, METRICS


def _pm(s: dict[str, float | None], latex: bool = False) -> str:
    if s["mean"] is None:
        return "–"
    std = "" if s["std"] is None else (f" \\pm {s['std']:.2f}" if latex else f" ± {s['std']:.2f}")
    return f"${s['mean']:.2f}{std}$" if latex else f"{s['mean']:.2f}{std}"


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per group: the values every format shows."""
    out = []
    for g in report["groups"]:
        ref = g.config.get("reference") or {}
        row: dict[str, Any] = {"group": g.label, "n": g.stats["top1"]["n"]}
        for m in METRICS:
            row[m] = g.stats[m]
            row[f"delta_{m}"] = g.delta.get(m)
            paper = ref.get("all" if m == "top1" else m)
            row[f"paper_{m}"] = paper
            mean = g.stats[m]["mean"]
            row[f"vs_paper_{m}"] = (
                mean - paper if (paper is not None and mean is not None) else None
            )
        row["checkpoint"] = "; ".join(sorted({r.checkpoint.split(" (")[0] for r in g.runs}))
        row["runs"] = [str(r.path) for r in g.runs]
        row["duplicates"] = [str(other.path) for _, other in g.duplicates]
        out.append(row)
    return out


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def render(report: dict[str, Any], fmt: str = "md") -> str:
    table = rows(report)
    if fmt == "json":
        plain = {k: v for k, v in report.items() if k != "groups"}
        return json.dumps({**plain, "rows": table}, indent=2) + "\n"
    head = ["group", "n", *(HEADERS[m] for m in METRICS), "Δ All", "paper All", "vs paper"]
    body = [
        [
            r["group"],
            str(r["n"]),
            *(_pm(r[m], fmt == "latex") for m in METRICS),
            _signed(r["delta_top1"]),
            "–" if r["paper_top1"] is None else f"{r['paper_top1']:.1f}",
            _signed(r["vs_paper_top1"]),
        ]
        for r in table
    ]
    # Paper-only rows: their paper number only; nothing measured, so no n, mean or delta.
    paper = report.get("paper_only", [])
    body = paper_rows.placed(
        body, report["groups"], paper, lambda p: paper_rows.md_cells(p, len(head))
    )
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(
            [
                "group",
                "n",
                *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")],
                "delta_top1",
                "paper_top1",
                "vs_paper_top1",
                "checkpoint",
                "kind",
                "source",
            ]
        )
        lines = [
            [
                r["group"],
                r["n"],
                *[r[m][s] for m in METRICS for s in ("mean", "std")],
                r["delta_top1"],
                r["paper_top1"],
                r["vs_paper_top1"],
                r["checkpoint"],
                "trained",
                "",
            ]
            for r in table
        ]
        csv_cells = functools.partial(paper_rows.csv_cells, metric_columns=2 * len(METRICS))
        writer.writerows(paper_rows.placed(lines, report["groups"], paper, csv_cells))
        return buf.getvalue()
    if fmt == "latex":
        lines = [
            "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
            "\\toprule",
            " & ".join(head).replace("Δ", "$\\Delta$") + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(c.replace("_", "\\_") for c in b) + " \\\\" for b in body]
        return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"]) + "\n"
    if fmt != "md":
        raise UserError(f"--format must be md, csv, latex or json, got '{fmt}'.")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines) + "\n" + notes(report)


def notes(report: dict[str, Any]) -> str:
    """What was scored, the baseline, and the runs left out."""
    checkpoints = sorted({r["checkpoint"] for r in rows(report)})
    text = [
        "",
        f"Top-1 % on the {report['split']} split, mean ± sample std over seeds (n seeds; "
        "runs of the same config and seed are counted once); "
        f"checkpoint scored: {', '.join(checkpoints) or '–'} (never selected on test). "
        f"Δ against: {report['baseline'] or 'no baseline (give --baseline)'}.",
    ]
    for g in report["groups"]:
        for kept, other in g.duplicates:
            text.append(
                f"Same config and seed {other.config.get('seed')} as {kept.path}, counted once "
                f"(the most recently finished is used): {other.path}."
            )
    text += paper_rows.notes(report.get("paper_only", []))
    for inc in report["incomplete"]:
        text.append(
            f"Incomplete, excluded: {inc['path']} ({inc['epochs_done']}/{inc['epochs']} epochs)."
        )
    return "\n".join(text) + "\n"


def write_outputs(
    report: dict[str, Any],
    out: Path,
    fmt: str,
    svg: bool,
    overwrite: bool = False,
    inputs: Sequence[Path] = (),
) -> list[Path]:
    """The table (report.FMT, plus report.json) and the figures in `out`. A folder that already
    holds files is refused unless `overwrite`, which replaces it whole, so old curves or
    TensorBoard events never mix with these (lwrcli.runtime.results)."""
    with results_folder(out, overwrite, inputs) as staging:
        written = _write(report, staging, fmt, svg)
    return [out / p.relative_to(staging) for p in written]


def _write(report: dict[str, Any], out: Path, fmt: str, svg: bool) -> list[Path]:
    from lwrcli.studies import report_plots

    written = []
    for f in dict.fromkeys([fmt, "json"]):
        path = out / f"report.{f}"
        path.write_text(render(report, f))
        written.append(path)
    groups = report["groups"]
    if groups:
        for ext in ("png", "svg") if svg else ("png",):
            for fn, name in ((report_plots.curves, "curves"), (report_plots.shot_bars, "shots")):
                path = fn(out / f"{name}.{ext}", groups)
                if path is not None:
                    written.append(path)
        tb = report_plots.tensorboard_scalars(out, groups)
        if tb is not None:
            written.append(tb)
    return written
