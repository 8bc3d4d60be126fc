"""Paper-only rows: methods lwr does not train (OLTR, LFME, UNO-IC), listed in a sweep file
with their published numbers so that `lwr report` prints them beside the trained rows.

A sweep file names them under `paper_only` (see PaperRow); `lwr sweep` checks them with the
rest of the file and records them in SWEEP_DIR/sweep.json (key `paper_only`, next to
`command` and `runs`) without training anything; `lwr report` reads them back from the
sweep.json of the folders it is given and prints them marked "paper only, not trained here".
They never become a run, a group, a baseline or a figure: the report's JSON keeps them
under their own key, outside `rows`.

Floor-level (pydantic and the standard library), so the sweep (which records the rows) and
the report (which prints them) share one definition without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lwrcli.errors import UserError
from lwrcli.runtime.runname import SWEEP_FILE, sweep_root

MARK = "paper only, not trained here"
KEYS = ("all", "many", "medium", "few")  # top-1 %, as in every preset's `reference`


class PaperRow(BaseModel):
    """A published result of a method lwr does not train, e.g.
    `{name: OLTR, reference: {all: 41.9, many: 61.8}, source: "...", data: ir100}`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    reference: dict[str, float]  # top-1 % by shot group: all / many / medium / few
    source: str = Field(min_length=1)  # paper, table and backbone the numbers come from
    data: str | None = None  # a key of `--data KEY=PATH`, as Entry.data; None: the one dataset
    note: str = ""  # e.g. "reproduced by Zhou et al. (BBN), not by the method's authors"

    @field_validator("reference")
    @classmethod
    def _numbers(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError(f"give at least one top-1 % number ({', '.join(KEYS)})")
        unknown = sorted(set(value) - set(KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed: {', '.join(KEYS)} (top-1 %)")
        wrong = {k: v for k, v in value.items() if not 0.0 <= v <= 100.0}
        if wrong:
            raise ValueError(f"top-1 is a percentage in [0, 100], got {wrong}")
        return value


def check_rows(rows: list[PaperRow], entry_keys: list[str]) -> None:
    """Every row names a dataset the sweep trains on (entry_keys: each entry's data key, ''
    for plain --data), and no (name, dataset) pair comes twice. Raises UserError."""
    used = sorted(set(entry_keys))
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if row.data is None and len(used) > 1:
            raise UserError(
                f"Paper-only row '{row.name}' needs `data: KEY` to say which dataset its "
                f"numbers belong to; this sweep trains on {', '.join(used)}."
            )
        key = used[0] if row.data is None else row.data
        if key not in used:
            raise UserError(
                f"Paper-only row '{row.name}' has data: {row.data}, which no entry of the "
                f"sweep uses; entries use: {', '.join(k or '(plain --data)' for k in used)}."
            )
        if (row.name, key) in seen:
            raise UserError(f"Paper-only row '{row.name}' is listed twice for data '{key}'.")
        seen.add((row.name, key))


def record_rows(rows: list[PaperRow], runs: list[Any]) -> list[dict[str, Any]]:
    """The rows as sweep.json keeps them, each with the dataset folder its key stands for
    (taken from the planned runs: `data_key`, `data`), so the report can place it."""
    folders = {r.data_key: str(r.data) for r in reversed(runs)}
    default = str(runs[0].data) if runs and len(folders) == 1 else None
    out = []
    for row in rows:
        folder = folders.get(row.data) if row.data is not None else default
        out.append({**row.model_dump(mode="json"), "data_dir": folder})
    return out


def same_runs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Two sweep records that differ at most in their paper-only rows: those train nothing,
    so correcting a number must not make `lwr sweep` refuse to continue the sweep."""

    def strip(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k != "paper_only"}

    return strip(old) == strip(new)


# ---------------------------------------------------------------------------------------------
# Reading them back for `lwr report`


def _sweep_roots(paths: list[Path]) -> list[Path]:
    """The sweep folders of the given folders: the folder itself, the sweep above a run
    folder, or every sweep below a folder that holds several."""
    roots: list[Path] = []
    for p in map(Path, paths):
        found = [p] if (p / SWEEP_FILE).is_file() else []
        above = sweep_root(p) if not found else None
        found += [above] if above else sorted(f.parent for f in p.rglob(SWEEP_FILE))
        roots += [r.resolve() for r in found if r.resolve() not in roots]
    return roots


def find_rows(paths: list[Path], run_dirs: list[Path]) -> list[dict[str, Any]]:
    """The paper-only rows recorded by the sweeps of `paths` whose dataset has a run among
    `run_dirs` (the run folders being reported), each with `runs` (the run folders on its
    dataset, to place it beside them) and `sweep`. A row listed identically by two sweeps
    comes once. A sweep.json that cannot be read adds nothing (it is not a run's result)."""
    reported = {Path(d).resolve() for d in run_dirs}
    out: dict[str, dict[str, Any]] = {}
    for root in _sweep_roots(paths):
        try:
            record = json.loads((root / SWEEP_FILE).read_text(encoding="utf-8"))
            planned = [(str(r["name"]), r["data"]) for r in record.get("runs", [])]
            rows = [dict(r) for r in record.get("paper_only", [])]
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
            continue
        for row in rows:
            runs = [(root / n).resolve() for n, d in planned if row.get("data_dir") in (None, d)]
            if not reported & set(runs):
                continue
            key = json.dumps(
                [row.get(k) for k in ("name", "reference", "source", "data_dir")], sort_keys=True
            )
            kept = out.setdefault(key, {**row, "mark": MARK, "sweep": str(root), "runs": []})
            kept["runs"] += [str(r) for r in runs if str(r) not in kept["runs"]]
    return list(out.values())


def placed(trained: list[Any], groups: list[Any], rows: list[dict[str, Any]], cell) -> list:
    """The table rows with each paper-only row (made by `cell(row)`) just after the last
    group that holds a run on its dataset; rows whose dataset has no finished run go last."""
    after: dict[int, list[Any]] = {}
    for row in rows:
        mine = set(row["runs"])
        hits = [
            i for i, g in enumerate(groups) if any(str(r.path.resolve()) in mine for r in g.runs)
        ]
        after.setdefault(hits[-1] if hits else len(groups) - 1, []).append(cell(row))
    out: list[Any] = list(after.get(-1, []))
    for i, line in enumerate(trained):
        out += [line, *after.get(i, [])]
    return out


def label(row: dict[str, Any]) -> str:
    return f"{row['name']} ({MARK})"


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per row under the table: every number, its source, and its dataset."""
    lines = []
    for row in rows:
        ref = row["reference"]
        nums = ", ".join(f"{k} {ref[k]:.1f}" for k in KEYS if k in ref)
        where = f"; data {row['data']}" if row.get("data") else ""
        note = f"; {row['note']}" if row.get("note") else ""
        lines.append(f"{label(row)}: {nums} (source: {row['source']}{where}{note}).")
    return lines


def md_cells(row: dict[str, Any], width: int) -> list[str]:
    """The row in the md/latex table: its label, dashes (nothing measured), the paper's All
    in the second-to-last column ("paper All")."""
    cells = [label(row), *["–"] * (width - 1)]
    cells[-2] = f"{row['reference']['all']:.1f}" if "all" in row["reference"] else "–"
    return cells


def csv_cells(row: dict[str, Any], metric_columns: int) -> list[Any]:
    """The row in the CSV: label, empty n and measured columns, paper_top1, kind, source."""
    empty = [""] * (1 + metric_columns + 1)  # n, mean/std per metric, delta_top1
    return [label(row), *empty, row["reference"].get("all", ""), "", "", MARK, row["source"]]
