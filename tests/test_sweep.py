"""`lwr sweep`: folders and names, skip/resume after a real Ctrl-C, refusal, shipped sweep files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from safetensors.torch import load_file

from lwrcli.config import list_presets, load_config
from lwrcli.hooks import PAUSE_ENV
from lwrcli.studies.sweep import list_sweeps, load_sweep_file, parse_grid, split_values

SETS = ["epochs=2", "model.width=8", "batch_size=16", "eval_every=1", "log_every=2"]
NAMES = [
    f"{p}/theta={t}/seed={s}" for p in ("bs", "bs-lwr") for t in ("0.2", "0.6") for s in (0, 1)
]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["sweep", "--preset", "synthetic-lt-bs", "--preset", "synthetic-lt-bs-lwr"]
    args += [
        "--grid",
        "lwr.theta=0.2,0.6",
        "--seeds",
        "0,1",
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    for item in SETS:
        args += ["--set", item]
    return [*args, *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def test_grid_values_keep_bracketed_commas() -> None:
    assert split_values("[1,2],[3, 4]") == ["[1,2]", "[3, 4]"]
    assert parse_grid(["schedule.milestones=[1,2],[3,4]", "lwr.theta=-1,0.4"]) == {
        "schedule.milestones": [[1, 2], [3, 4]],
        "lwr.theta": [-1, 0.4],
    }


@pytest.mark.parametrize("name", list_sweeps())
def test_shipped_sweep_files_validate(name: str) -> None:
    """Every preset exists and every run's overrides validate (keys and values)."""
    from lwrcli.studies.sweep import Entry, plan_sweep

    spec = load_sweep_file(name)
    assert spec.entries and spec.seeds
    presets = set(list_presets())
    for entry in spec.entries:
        assert entry.preset in presets, entry.preset
    for ref in spec.references:
        assert set(ref.where) <= set(spec.grid)
        for key, value in ref.where.items():
            assert value in spec.grid[key]
    # Validate every run's config without a dataset: plan against a stub that skips the data.
    keys = {e.data or "" for e in spec.entries}
    import lwrcli.studies.sweep as sweep_mod

    orig_read, orig_check = sweep_mod.read_manifest, sweep_mod.check_dataset_matches
    sweep_mod.read_manifest = lambda d: None  # type: ignore[assignment]
    sweep_mod.check_dataset_matches = lambda *a: None  # type: ignore[assignment]
    try:
        runs = plan_sweep(spec, {k: Path(f"/nonexistent/{k}") for k in keys})
    finally:
        sweep_mod.read_manifest, sweep_mod.check_dataset_matches = orig_read, orig_check
    assert len({r.name for r in runs}) == len(runs)
    assert isinstance(spec.entries[0], Entry)


def test_theta_sweep_carries_the_paper_rows() -> None:
    spec = load_sweep_file("cifar100-lt-ir100-theta")
    refs = {r.where["lwr.theta"]: r.reference["all"] for r in spec.references}
    assert refs == {-1.0: 50.1, 0.0: 50.0, 0.2: 50.2, 0.4: 50.7, 0.6: 49.9, 1.0: 46.3}
    assert load_config("cifar100-lt-ir100-ce").reference == {
        "all": 38.6,
        "many": 65.3,
        "medium": 37.6,
        "few": 8.7,
    }


@pytest.mark.slow
def test_sweep_interrupted_then_rerun_equals_uninterrupted(lwr, tmp_path: Path, small_ir10: Path):
    # The reference: the whole sweep, uninterrupted, in this process.
    ref = tmp_path / "ref"
    r = lwr(*_args(small_ir10, ref))
    assert r.code == 0, r.err
    found = sorted(str(p.parent.relative_to(ref)) for p in ref.rglob("metrics.jsonl"))
    assert found == sorted(NAMES)
    record = json.loads((ref / "sweep.json").read_text())
    assert [x["name"] for x in record["runs"]] == NAMES
    run = next(x for x in record["runs"] if x["name"] == "bs-lwr/theta=0.6/seed=1")
    assert run["preset"] == "synthetic-lt-bs-lwr"
    assert run["overrides"] == [*SETS, "lwr.theta=0.6", "seed=1"]
    saved = yaml.safe_load((ref / "bs-lwr/theta=0.6/seed=1/config.yaml").read_text())
    assert saved["lwr"]["theta"] == 0.6 and saved["seed"] == 1 and saved["lwr"]["enabled"]

    # A real SIGINT to a subprocess sweep while its third run evaluates its last epoch (the
    # window of issue 17: the trainer's handler takes it after the last step). The process
    # holds at that point until its handler has run, so the test never races the clock.
    cut = tmp_path / "cut"
    ready = tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(REPO), PAUSE_ENV: f"last-eval#3:{ready}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lwrcli", *_args(small_ir10, cut)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "same command" in err and "error:" not in err
    assert "Sweep stopped before run 4/8" in " ".join(err.split()), err[-2000:]
    finished = [n for n in NAMES if (cut / n / "metrics.jsonl").is_file()]
    assert finished == NAMES[:3], err[-2000:]  # the third run completed; no fourth began
    assert not (cut / NAMES[3]).exists()
    stamps = {
        n: (cut / n / "checkpoints" / "last.safetensors").stat().st_mtime_ns for n in NAMES[:3]
    }

    r = lwr(*_args(small_ir10, cut))
    assert r.code == 0, r.err
    assert "3 finished already" in r.err, r.err
    for n in NAMES[:3]:  # finished runs were not touched
        assert (cut / n / "checkpoints" / "last.safetensors").stat().st_mtime_ns == stamps[n]
    for n in NAMES:
        a, b = _weights(ref / n), _weights(cut / n)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), n
        lines = (cut / n / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]

    # A different command on the same folder is refused, and nothing changes.
    before = (cut / "sweep.json").read_text()
    r = lwr(*_args(small_ir10, cut, "--set", "optim.lr=0.01"))
    assert r.code == 2 and "different sweep" in r.err and "Traceback" not in r.err
    assert (cut / "sweep.json").read_text() == before


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    """Until the process announces it holds at its pause point (or has ended)."""
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before the pause point")
        time.sleep(0.02)


def test_bad_sweep_inputs_are_user_errors(lwr, tmp_path: Path, small_ir10: Path) -> None:
    out = tmp_path / "s"
    r = lwr("sweep", "--preset", "nope", "--data", small_ir10, "--out", out)
    assert r.code == 2 and "Unknown preset" in r.err
    r = lwr(
        "sweep",
        "--preset",
        "synthetic-lt-bs",
        "--grid",
        "lwr.thetta=1",
        "--data",
        small_ir10,
        "--out",
        out,
    )
    assert r.code == 2 and "lwr.theta" in r.err
    r = lwr("sweep", "--file", "nope", "--data", small_ir10, "--out", out)
    assert r.code == 2 and "cifar100-lt-ir100-theta" in r.err
    assert not out.exists()


def test_plan_and_slurm_scripts_name_every_run(lwr, tmp_path: Path, small_ir10: Path) -> None:
    out = tmp_path / "s"
    r = lwr(*_args(small_ir10, out, "--plan"))
    assert r.code == 0, r.err
    plan = (out / "plan.sh").read_text()
    for n in NAMES:
        assert f"--out {out / n} " in plan
    assert plan.count("lwr train --preset") == len(NAMES)
    r = lwr(*_args(small_ir10, out, "--slurm", "--gpus-per-run", "2"))
    assert r.code == 0, r.err
    script = (out / "sweep.sbatch").read_text()
    assert f"--array=0-{len(NAMES) - 1}" in script and "torchrun" in script
    # SLURM's warning two minutes before the limit reaches the run, which saves and requeues.
    assert "#SBATCH --signal=B:USR1@120" in script and "trap 'kill -TERM" in script
    assert script.count(" --requeue;") == 2 * len(NAMES)  # fresh and resume commands
    assert not any(p.name == "metrics.jsonl" for p in out.rglob("*"))


def test_sweep_and_report_help(lwr) -> None:
    for cmd in ("sweep", "report"):
        r = lwr(cmd, "--help")
        assert r.code == 0 and "--out" in r.out


def _chained_sweep_file(tmp_path: Path, first: str = "stage1", seeds: int = 2) -> Path:
    spec = {
        "entries": [
            {"preset": "synthetic-lt-ce", "name": "stage1"},
            {"preset": "synthetic-lt-crt", "name": "crt", "init_from": first},
        ],
        "seeds": list(range(seeds)),
        "set": ["epochs=1", "model.width=8", "batch_size=16", "log_every=2"],
    }
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_stage_two_entry_starts_from_its_own_stage_one(
    lwr, tmp_path: Path, small_ir10: Path, parallel: str
) -> None:
    out = tmp_path / "s"
    seeds = 2 if parallel == "1" else 1  # subprocesses each import torch: keep them few
    sweep_file = _chained_sweep_file(tmp_path, seeds=seeds)
    r = lwr(
        "sweep", "--file", sweep_file, "--data", small_ir10, "--out", out, "--parallel", parallel
    )
    assert r.code == 0, r.err + r.out
    for seed in range(seeds):
        stage1, stage2 = out / f"stage1/seed={seed}", out / f"crt/seed={seed}"
        cfg = yaml.safe_load((stage2 / "config.yaml").read_text())
        init = Path(cfg["init"]["checkpoint"])
        assert init == (stage1 / "checkpoints" / "last.safetensors").resolve()
        # cRT keeps the stage-1 backbone: its convolution weights are stage 1's, bit for bit.
        first, second = _weights(stage1), _weights(stage2)
        conv = [k for k in first if k.endswith(".weight") and first[k].dim() == 4]
        assert conv and all(torch.equal(first[k], second[k]) for k in conv)
    if seeds == 2:  # each seed's stage 2 starts from its own stage 1
        other = _weights(out / "crt/seed=1")
        assert not torch.equal(_weights(out / "crt/seed=0")[conv[0]], other[conv[0]])
        # The report pools the seeds of each entry (their init checkpoints differ by seed
        # only) and names the groups by their entries.
        r = lwr("report", out, "--format", "json")
        assert r.code == 0, r.err
        groups = {row["group"]: row["n"] for row in json.loads(r.out)["rows"]}
        assert groups == {"stage1": 2, "crt": 2}


def test_chained_sweeps_refuse_what_cannot_keep_the_order(
    lwr, tmp_path: Path, small_ir10: Path
) -> None:
    out = tmp_path / "s"
    r = lwr(
        "sweep", "--file", _chained_sweep_file(tmp_path, "nope"), "--data", small_ir10, "--out", out
    )
    assert r.code == 2 and "init_from" in r.err and "stage1" in r.err
    r = lwr(
        "sweep",
        "--file",
        _chained_sweep_file(tmp_path),
        "--data",
        small_ir10,
        "--out",
        out,
        "--slurm",
    )
    assert r.code == 2 and "any order" in r.err
    assert not out.exists()
    r = lwr(
        "sweep",
        "--file",
        _chained_sweep_file(tmp_path),
        "--data",
        small_ir10,
        "--out",
        out,
        "--plan",
    )
    plan = (out / "plan.sh").read_text()
    assert plan.index("--out " + str(out / "stage1/seed=0")) < plan.index(str(out / "crt/seed=0"))
