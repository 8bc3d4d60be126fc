"""Issue 17: stops that stick, failed starts that leave nothing, runs that restart themselves.

Signals are sent only once the process holds at a named pause point (lwrcli.hooks), so no
test races the clock.
"""

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
from conftest import REPO, train_args
from safetensors.torch import load_file, save_file

from lwrcli.hooks import KILL_ENV, PAUSE_ENV

# 90 train images in batches of 16: 6 steps per epoch.
TINY = ["model.width=8", "batch_size=16", "epochs=2", "eval_every=1", "log_every=1", "device=cpu"]
PRESET = "synthetic-lt-bs"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"


def _epochs(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["epoch"] for x in lines]  # 0: the initial geometry


def _start(args: list[str], env: dict[str, str], cmd: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd or [sys.executable, "-m", "lwrcli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until the process says it holds at its pause point (or has ended)."""
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before the pause point:\n{err}")
        time.sleep(0.02)


# --- item 1: a stop after the last step --------------------------------------------------------


@pytest.mark.slow
def test_stop_during_last_evaluation_is_too_late_to_matter(lwr, tmp_path: Path, small: Path):
    run, ready = tmp_path / "run", tmp_path / "paused"
    proc = _start(train_args(PRESET, small, run, *TINY), {PAUSE_ENV: f"last-eval:{ready}"})
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "too late to matter" in err and "Traceback" not in err
    assert "error:" not in err  # a stop asked for, and harmless: not an error (issue 24)
    assert _epochs(run) == [0, 1, 2]  # the run is complete and saved
    # The same command again: nothing left to do; it says what the run recorded.
    r = lwr(*train_args(PRESET, small, run, *TINY))
    assert r.code == 0 and "already finished all 2 epochs" in r.err, r.err
    assert "test_top1" in r.err and "no evaluation" not in r.err, r.err


# --- item 2: a failed start leaves nothing ----------------------------------------------------


class NotATensor:
    """A pickled object that weights_only loading refuses."""


def _bad_start(case: str, tmp: Path) -> list[str]:
    if case == "missing":
        return [f"model.pretrained={tmp / 'missing.safetensors'}"]
    if case == "pickled":
        torch.save({"w": torch.zeros(1), "obj": NotATensor()}, tmp / "evil.pth")
        return [f"model.pretrained={tmp / 'evil.pth'}"]
    if case == "unrelated":
        save_file({"foo.weight": torch.zeros(3)}, str(tmp / "other.safetensors"))
        return [f"model.pretrained={tmp / 'other.safetensors'}"]
    return ["model.name=resnet32", "optim.layer_decay=0.7"]  # no ViT blocks to decay


@pytest.mark.parametrize("case", ["missing", "pickled", "unrelated", "layer_decay"])
def test_failed_start_leaves_nothing_and_the_corrected_command_runs(
    lwr, tmp_path: Path, small: Path, case: str
) -> None:
    run = tmp_path / "runs" / "r"
    bad = _bad_start(case, tmp_path)
    r = lwr(*train_args(PRESET, small, run, *TINY, "epochs=1", *bad))
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert not (tmp_path / "runs").exists()  # exactly what the command created is gone
    r = lwr(*train_args(PRESET, small, run, *TINY, "epochs=1"))
    assert r.code == 0, r.err
    assert _epochs(run) == [0, 1]


def test_failed_start_in_an_existing_empty_folder_keeps_the_folder(
    lwr, tmp_path: Path, small: Path
) -> None:
    run = tmp_path / "r"
    run.mkdir()
    r = lwr(*train_args(PRESET, small, run, *TINY, *_bad_start("missing", tmp_path)))
    assert r.code == 2
    assert run.is_dir() and not any(run.iterdir())


def test_failed_sweep_start_leaves_nothing(lwr, tmp_path: Path, small: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "--preset", PRESET, "--data", small, "--out", out, "--seeds", "0,1"]
    for item in [*TINY, "epochs=1"]:
        args += ["--set", item]
    r = lwr(*args, "--set", f"model.pretrained={tmp_path / 'missing.safetensors'}")
    assert r.code == 2 and "does not exist" in r.err, r.err
    assert not out.exists()
    r = lwr(*args)
    assert r.code == 0, r.err
    assert sorted(p.parent.name for p in out.rglob("metrics.jsonl")) == ["seed=0", "seed=1"]


# --- item 3: the same command continues; another is refused -----------------------------------


@pytest.mark.slow
def test_same_command_continues_and_another_is_refused(lwr, tmp_path: Path, small: Path):
    ref = tmp_path / "ref"
    assert lwr(*train_args(PRESET, small, ref, *TINY)).code == 0
    run, ready = tmp_path / "run", tmp_path / "paused"
    # Stop in epoch 2 after its second step (step 8 of the run): saved there.
    proc = _start(train_args(PRESET, small, run, *TINY), {PAUSE_ENV: f"step#8:{ready}"})
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = lwr(*train_args(PRESET, small, run, *TINY, "optim.lr=0.01"))
    assert r.code == 2 and "optim.lr" in r.err and "nothing was changed" in r.err, r.err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    r = lwr(*train_args(PRESET, small, run, *TINY))
    assert r.code == 0, r.err
    assert f"continuing {run} from epoch 2, step 2" in r.err
    assert _epochs(run) == [0, 1, 2]
    _assert_same_weights(ref, run)


@pytest.mark.slow
def test_torchrun_restart_after_a_kill_mid_epoch_equals_uninterrupted(
    tmp_path: Path, small: Path
) -> None:
    sets = [*TINY, "model.norm=group", "checkpoint_every_steps=2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", "1", "--max-restarts", "1", "-m", "lwrcli"]
    runs = {}
    # Killed right after its 4th save is on disk (steps 2 and 4, the end of epoch 1, step 2
    # of epoch 2: `saved` is reached on the checkpoint writer's thread) while training goes on.
    for name, env in (("ref", {}), ("killed", {KILL_ENV: "saved#4"})):
        runs[name] = tmp_path / name
        cmd = [*torchrun, *train_args(PRESET, small, runs[name], *sets)]
        proc = _start([], env, cmd)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        runs[name + "_err"] = err  # type: ignore[assignment]
    # The first attempt died in epoch 2 after its save at step 2; the second attempt, the same
    # command, continued from there.
    assert f"continuing {runs['killed']} from epoch 2, step 2" in str(runs["killed_err"])
    assert _epochs(runs["killed"]) == [0, 1, 2]
    _assert_same_weights(runs["ref"], runs["killed"])


@pytest.mark.slow
def test_scheduler_warning_saves_and_requeues(lwr, tmp_path: Path, small: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    run, ready = tmp_path / "run", tmp_path / "paused"
    env = {
        PAUSE_ENV: f"step#3:{ready}",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
    }
    args = [*train_args(PRESET, small, run, *TINY), "--requeue"]
    proc = _start(args, env)
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "Requeued SLURM job 4242" in err
    assert (run / "checkpoints" / "last.safetensors").is_file()
    # The requeued job runs the same command: it continues and finishes.
    r = lwr(*args)
    assert r.code == 0 and f"continuing {run} from epoch 1, step 3" in r.err, r.err
    assert _epochs(run) == [0, 1, 2]


def test_requeue_outside_slurm_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from lwrcli.runtime.slurm import requeue_job

    messages: list[str] = []
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not requeue_job(messages.append)
    assert "no SLURM_JOB_ID" in messages[0]
