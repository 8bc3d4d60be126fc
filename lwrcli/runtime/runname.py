"""Readable names of run folders: a run inside a sweep is named by its name within the sweep
(`bs-lwr/theta=0.4/seed=0`), as `lwr sweep` recorded it in the sweep's `sweep.json`; any
other run by its folder's name.

A floor-level module (standard library only), so checkpoints, analysis and the sweep itself
can share one definition without a lower room importing a higher one.
"""

from __future__ import annotations

import json
from pathlib import Path

SWEEP_FILE = "sweep.json"


def sweep_root(run_dir: Path) -> Path | None:
    """The nearest folder above `run_dir` that holds a sweep.json, or None."""
    for parent in Path(run_dir).resolve().parents:
        if (parent / SWEEP_FILE).is_file():
            return parent
    return None


def _recorded_names(root: Path) -> set[str]:
    """The run names sweep.json lists; empty when it cannot be read (a damaged or foreign
    file must not stop a plot from being drawn)."""
    try:
        record = json.loads((root / SWEEP_FILE).read_text(encoding="utf-8"))
        return {str(r["name"]) for r in record.get("runs", [])}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        return set()


def run_name(run_dir: Path) -> str:
    """`run_dir`'s name within its sweep when the sweep lists it, else the folder's name.
    Every seed folder of a sweep is called `seed=N`, which alone says nothing."""
    run_dir = Path(run_dir)
    root = sweep_root(run_dir)
    if root is not None:
        rel = run_dir.resolve().relative_to(root).as_posix()
        if rel in _recorded_names(root):
            return rel
    return run_dir.name
