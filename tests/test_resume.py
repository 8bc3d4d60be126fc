"""Runs that survive anything: mid-epoch resume and real kills, checked bit for bit on CPU."""

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
from resume_scenario import assert_same_run, cut_and_resume

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.checkpoint.resume import PAUSE_ENV
from lwrcli.config import load_config
from lwrcli.train.engine import Trainer
from lwrcli.train.run import train_run
from lwrcli.train.runlog import read_metrics

TINY = ["model.width=8", "batch_size=16", "eval_every=1", "log_every=1", "device=cpu"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, preset, extra",
    [
        ("small", "synthetic-lt-bs-lwr", []),
        (
            "jpegs",
            "synthetic-lt-bs-lwr",
            [
                "dataset=any",
                "data.image_size=16",
                "data.resize=18",
                "data.num_workers=2",
                "data.color_jitter=0.4",
            ],
        ),
    ],
)
def test_mid_epoch_resume_is_bit_exact(
    source: str,
    preset: str,
    extra: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    data = request.getfixturevalue(source)
    cfg = load_config(preset, overrides=[*TINY, *extra, "epochs=2", "checkpoint_every_steps=2"])
    full, _ = cut_and_resume(cfg, data, tmp_path, monkeypatch)
    assert len(read_metrics(full / "metrics.jsonl")) == 3  # epochs 0 (initial geometry), 1, 2


def _train_cmd(data: Path, run: Path, *sets: str) -> list[str]:
    return [sys.executable, "-m", "lwrcli", *train_args("synthetic-lt-bs-lwr", data, run, *sets)]


def _run_until(
    cmd: list[str], marker: str, nth: int, env: dict[str, str], delay: float = 0.0
) -> str:
    """Start `cmd`, SIGKILL its whole process group `delay` s after `marker` has appeared
    `nth` times on stderr (the test pause hook holds the process at the marker)."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    seen, lines = 0, []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            seen += 1
            if seen == nth:
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=120)
    assert seen == nth, "".join(lines)[-3000:]
    return "".join(lines)


def _resume(run: Path, *launcher: str) -> None:
    cmd = [*(launcher or (sys.executable, "-m", "lwrcli")), "train", "--resume", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker, nth, delay",
    [
        ("lwr-checkpoint: written", 2, 0.0),  # during the checkpoint write: temp files only
        ("lwr-checkpoint: state-committed", 3, 0.0),  # between the state file and the weights
        ("lwr-checkpoint: committed", 4, 0.45),  # mid-step: training resumed 0.3 s after it
    ],
)
def test_sigkill_then_resume_finishes_like_an_uninterrupted_run(
    small: Path, tmp_path: Path, marker: str, nth: int, delay: float
) -> None:
    sets = [*TINY, "epochs=2", "checkpoint_every_steps=2"]
    train_run(load_config("synthetic-lt-bs-lwr", overrides=sets), small, tmp_path / "full")
    run = tmp_path / "killed"
    env = {**os.environ, PAUSE_ENV: "0.3"}
    _run_until(_train_cmd(small, run, *sets), marker, nth, env, delay)
    with open(run / "metrics.jsonl", "a") as f:  # and a line torn by the crash
        f.write('{"epoch": 7, "loss": 0.12')
    _resume(run)
    assert_same_run(tmp_path / "full", run)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # a killed save's leftovers go


@pytest.mark.slow
def test_torchrun_two_processes_killed_mid_epoch_resume_bit_exact(
    small: Path, tmp_path: Path
) -> None:
    sets = [*TINY, "epochs=2", "checkpoint_every_steps=2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", "2", "-m", "lwrcli"]
    full = tmp_path / "full"
    proc = subprocess.run(
        [*torchrun, *train_args("synthetic-lt-bs-lwr", small, full, *sets)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "killed"
    cmd = [*torchrun, *train_args("synthetic-lt-bs-lwr", small, run, *sets)]
    # Global batch 16 (8 per process): 6 steps an epoch, as in one process. Saves: steps 2
    # and 4, the end of epoch 1, then step 2 of epoch 2 -- where the kill comes.
    _run_until(cmd, "lwr-checkpoint: committed", 4, {**os.environ, PAUSE_ENV: "0.5"})
    saved = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert (saved.epoch, saved.step) == (1, 2)  # killed inside the second epoch
    _resume(run, *torchrun)
    assert_same_run(full, run)


def test_train_split_smaller_than_a_batch_is_refused(lwr, small: Path, tmp_path: Path) -> None:
    r = lwr(*train_args("synthetic-lt-bs", small, tmp_path / "run", "batch_size=128"))
    assert r.code == 2
    n = json.loads((small / "manifest.json").read_text())["splits"]["train"]
    assert n < 128 and f"has {n} images" in r.err and "one batch of 128" in r.err
    assert not (tmp_path / "run").exists()


def test_a_recipe_for_another_dataset_is_refused_before_loading(
    lwr, jpegs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lwrcli.train.run as training

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaders were built before the dataset check")

    monkeypatch.setattr(training, "build_data", no_loading)
    r = lwr(*train_args("synthetic-lt-bs", jpegs, tmp_path / "run"))
    assert r.code == 2 and "recipe for dataset 'synthetic'" in r.err


def test_resume_reads_damaged_run_files_as_user_errors(lwr, small: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert lwr(*train_args("synthetic-lt-bs", small, run, *TINY, "epochs=2")).code == 0
    (run / "run.json").write_text("{not json")
    r = lwr("train", "--resume", run)
    assert r.code == 2 and "run.json" in r.err and "Traceback" not in r.err
    (run / "run.json").write_text(json.dumps({"data_dir": str(small)}))
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg.replace("epochs: 2", "epochs: 3"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("garbage\n" + "\n".join(lines) + "\n")
    r = lwr("train", "--resume", run)
    assert r.code == 2 and "line 1 is damaged" in r.err


def test_workers_never_exceed_the_cores(jpegs: Path) -> None:
    from lwrcli.config import DataConfig
    from lwrcli.data.image_loader import available_cores, build_image_loader
    from lwrcli.data.manifest import read_manifest

    loader = build_image_loader(
        jpegs, read_manifest(jpegs), "train", DataConfig(num_workers=128), 4, True, 0
    )
    assert loader.num_workers == min(128, available_cores())


def test_a_damaged_metrics_file_keeps_its_intact_records(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.5}\n{"epoch": 3, "lo')
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]


def test_a_second_ctrl_c_during_a_save_waits_for_it(small: Path) -> None:
    from lwrcli.data.loading import build_data
    from lwrcli.train.build import build_components

    cfg = load_config("synthetic-lt-bs", overrides=TINY)
    data = build_data(small, cfg, torch.device("cpu"))
    trainer = Trainer(
        cfg, build_components(cfg, data, torch.device("cpu")), torch.device("cpu"), run_dir=None
    )
    trainer._on_signal(signal.SIGINT, None)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with trainer._saving_guard():
            trainer._on_signal(signal.SIGINT, None)  # must not interrupt the save itself
            finished.append(True)
    assert finished == [True]
    with pytest.raises(KeyboardInterrupt):  # outside a save, a second Ctrl-C stops at once
        trainer._abort_after_save = False
        trainer._on_signal(signal.SIGINT, None)
