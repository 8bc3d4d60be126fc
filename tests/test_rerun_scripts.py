"""Issue 24: the plan.sh and sweep.sbatch that `lwr sweep --plan/--slurm` write can be run any
number of times, from any folder, and each run does only what is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SETS = ["epochs=1", "model.width=8", "batch_size=16", "log_every=2", "device=cpu"]
RUNS = ["bs/seed=0", "bs/seed=1"]


def _shell(script: Path, cwd: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """`bash SCRIPT` from `cwd`, with an `lwr` on PATH that runs this checkout."""
    cwd.mkdir(parents=True, exist_ok=True)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": path, "PYTHONPATH": str(REPO), **env},
    )


def _lwr_on_path(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lwr"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m lwrcli "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _stamps(sweep: Path) -> dict[str, int]:
    return {n: (sweep / n / "checkpoints" / "last.safetensors").stat().st_mtime_ns for n in RUNS}


@pytest.mark.slow
def test_plan_and_sbatch_rerun_from_anywhere(
    lwr, tmp_path: Path, small_ir10: Path, monkeypatch
) -> None:
    bin_dir = _lwr_on_path(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative --out, as a user types it
    args = ["sweep", "--preset", "synthetic-lt-bs", "--data", small_ir10, "--out", "sw"]
    for item in SETS:
        args += ["--set", item]
    r = lwr(*args, "--seeds", "0,1", "--plan", "--slurm")
    assert r.code == 0, r.err
    sweep = tmp_path / "sw"
    plan, sbatch = sweep / "plan.sh", sweep / "sweep.sbatch"

    # From another folder: the runs land in the sweep folder, not there.
    elsewhere = tmp_path / "elsewhere"
    p = _shell(plan, elsewhere, bin_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not any(elsewhere.iterdir())
    assert all((sweep / n / "metrics.jsonl").is_file() for n in RUNS)
    stamps = _stamps(sweep)

    # Again, from a third folder: each finished run is skipped with one line, exit 0.
    p = _shell(plan, tmp_path / "third", bin_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    said = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    assert said == [f"{sweep / n} already finished all 1 epochs; skipped." for n in RUNS], said
    assert _stamps(sweep) == stamps
    r = lwr("report", "sw", "--format", "json")
    assert r.code == 0 and [row["n"] for row in json.loads(r.out)["rows"]] == [2], r.out

    # A finish the script cannot see in metrics.jsonl (a stop between the last checkpoint
    # and its record): `lwr train --resume` sees it, says so and exits 0.
    metrics = sweep / RUNS[0] / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    p = _shell(plan, elsewhere, bin_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "already finished all 1 epochs; nothing to do" in p.stderr
    assert _stamps(sweep) == stamps

    # The SLURM array's task body, for one index, twice: it trains what is left, then skips.
    (sweep / RUNS[1]).rename(tmp_path / "gone")
    p = _shell(sbatch, elsewhere, bin_dir, SLURM_ARRAY_TASK_ID="1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (sweep / RUNS[1] / "metrics.jsonl").is_file() and not any(elsewhere.iterdir())
    again = (sweep / RUNS[1] / "checkpoints" / "last.safetensors").stat().st_mtime_ns
    p = _shell(sbatch, tmp_path / "third", bin_dir, SLURM_ARRAY_TASK_ID="1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == f"{sweep / RUNS[1]} already finished all 1 epochs; skipped."
    assert (sweep / RUNS[1] / "checkpoints" / "last.safetensors").stat().st_mtime_ns == again
