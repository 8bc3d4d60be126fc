"""Issue 24: a stop the user asked for is not an error, and names the real command that
continues; a finished run says what it recorded. Signals are sent only once the process holds
at a named pause point (lwrcli.hooks), so no test races the clock."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, train_args

from lwrcli.hooks import PAUSE_ENV
from lwrcli.studies.sweep_launch import PLAN_ENV
from lwrcli.studies.sweep_run import saved_at

# small_ir10: 63 train images in batches of 16, 4 steps per epoch.
TINY = ["model.width=8", "batch_size=16", "epochs=2", "eval_every=1", "log_every=1", "device=cpu"]
PRESET = "synthetic-lt-bs"


def _stopped(args: list[str], tmp_path: Path, point: str, **env: str) -> str:
    """Run `lwr ARGS` until it holds at `point`, send SIGINT; its stderr (exit 130)."""
    ready = tmp_path / "paused"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lwrcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), PAUSE_ENV: f"{point}:{ready}", **env},
    )
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "error:" not in err, err[-2000:]
    return err


def _epochs(run: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_names_the_run_and_a_finished_run_says_its_result(
    lwr, tmp_path: Path, small_ir10: Path
) -> None:
    run = tmp_path / "run"
    plan = tmp_path / "sweep" / "plan.sh"
    err = _stopped(
        train_args(PRESET, small_ir10, run, *TINY), tmp_path, "step#3", **{PLAN_ENV: str(plan)}
    )
    again = f"lwr train --resume {run.resolve()}"
    assert "Stopped in epoch 1, step 3 of 4; the run was saved there." in err, err
    assert f"Continue with: {again}" in err and f"bash {plan}" in err, err
    assert saved_at(run, 2) == "saved in epoch 1 after step 3"

    # The command it names continues the run ...
    r = lwr(*shlex.split(again)[1:])
    assert r.code == 0, r.err
    assert _epochs(run) == [0, 1, 2]
    # ... and run again it (or the training command) says the run is finished, exit 0, with
    # the test accuracy it recorded.
    top1 = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test_top1"]
    for args in (shlex.split(again)[1:], train_args(PRESET, small_ir10, run, *TINY)):
        r = lwr(*args)
        assert r.code == 0, r.err
        text = " ".join(r.err.split())
        assert "already finished all 2 epochs; nothing to do" in text, text
        assert f"test_top1 {top1:.2f}" in text and "no evaluation" not in text, text
        assert len(r.err.strip().splitlines()) == 1  # one line: a re-run script skips it


def test_a_sweep_stopped_mid_epoch_says_where_and_its_command(
    lwr, tmp_path: Path, small_ir10: Path
) -> None:
    out = tmp_path / "sw"
    args = ["sweep", "--preset", PRESET, "--data", small_ir10, "--out", out, "--seeds", "0,1"]
    for item in TINY:
        args += ["--set", item]
    err = _stopped(args, tmp_path, "step#3")
    said = " ".join(err.split())
    assert "Sweep stopped in run 1/2 bs/seed=0, epoch 1, step 3 of 4" in said, said
    assert "last complete epoch" not in said
    assert saved_at(out / "bs/seed=0", 2) == "saved in epoch 1 after step 3"
    assert saved_at(out / "bs/seed=1", 2) == "nothing saved yet"
    command = said.split("Continue with the same command: ", 1)[1]
    assert command == shlex.join(["lwr", *map(str, args)]), command
    r = lwr(*shlex.split(command)[1:])
    assert r.code == 0, r.err
    assert _epochs(out / "bs/seed=0") == [0, 1, 2] and _epochs(out / "bs/seed=1") == [0, 1, 2]


def test_a_parallel_sweep_stopped_says_where_each_run_was_saved(
    tmp_path: Path, small_ir10: Path
) -> None:
    out = tmp_path / "sw"
    args = ["sweep", "--preset", PRESET, "--data", small_ir10, "--out", out, "--seeds", "0,1"]
    for item in TINY:
        args += ["--set", item]
    # Each run holds at its third step; the first to get there lets the test stop the sweep,
    # which passes the stop on to both runs.
    err = _stopped([*args, "--parallel", "2"], tmp_path, "step#3")
    said = " ".join(err.split())
    assert re.search(r"Sweep stopped: .*bs/seed=[01] saved in epoch 1 after step 3", said), said
    assert "0 of 2 runs are finished" in said, said
    assert said.endswith(shlex.join(["lwr", *map(str, args), "--parallel", "2"])), said
