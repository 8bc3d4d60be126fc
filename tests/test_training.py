"""Training engine behaviour on the synthetic data: baseline identity, resume, DRW, NaN, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, train_args
from safetensors.torch import load_file

from lwrcli.config import load_config
from lwrcli.train.engine import Interrupted, Trainer, TrainingDiverged
from lwrcli.train.run import train_run

FAST = ["epochs=2", "eval_every=0", "model.width=8", "batch_size=128"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_theta_one_is_the_baseline_bit_for_bit(tmp_path: Path, synthetic_data: Path) -> None:
    base = load_config("synthetic-lt-bs", overrides=FAST)
    lwr1 = load_config(
        "synthetic-lt-bs-lwr",
        overrides=[*FAST, "lwr.theta=1.0", "lwr.lambda_max=5", "name=synthetic-lt-bs"],
    )
    train_run(base, synthetic_data, tmp_path / "a")
    train_run(lwr1, synthetic_data, tmp_path / "b")
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    # ... and LWR at theta 0.4 does change the weights (the test can fail).
    lwr4 = load_config("synthetic-lt-bs-lwr", overrides=FAST)
    train_run(lwr4, synthetic_data, tmp_path / "c")
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


@pytest.mark.slow
def test_resume_ends_with_the_same_weights(
    tmp_path: Path, synthetic_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config("synthetic-lt-bs-lwr", overrides=[*FAST, "epochs=3", "eval_every=1"])
    train_run(cfg, synthetic_data, tmp_path / "full")

    original = Trainer.train_epoch

    def stop_in_epoch_two(self: Trainer, epoch: int):
        if epoch == 1:
            self._stop_signal = 2  # as if Ctrl-C arrived during epoch 2
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_two)
    with pytest.raises(Interrupted):
        train_run(cfg, synthetic_data, tmp_path / "cut")
    monkeypatch.setattr(Trainer, "train_epoch", original)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    train_run(None, None, resume=tmp_path / "cut")  # type: ignore[arg-type]
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in cut] == [0, 1, 2, 3]
    assert [r.get("loss") for r in cut] == [r.get("loss") for r in full]


@pytest.mark.slow
def test_drw_switches_weights_at_the_configured_epoch(
    tmp_path: Path, synthetic_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(
        "synthetic-lt-bs",
        overrides=[*FAST, "epochs=3", "loss.name=ce", "loss.reweight=drw", "loss.drw_epoch=2"],
    )
    seen: dict[int, torch.Tensor | None] = {}
    original = Trainer.train_step

    def spy(self: Trainer, x, y, t, class_weight):
        seen.setdefault(int(t - 1e-9), class_weight)
        return original(self, x, y, t, class_weight)

    monkeypatch.setattr(Trainer, "train_step", spy)
    train_run(cfg, synthetic_data, tmp_path / "run")
    assert seen[0] is None and seen[1] is None
    manifest = json.loads((synthetic_data / "manifest.json").read_text())
    counts = torch.tensor(manifest["class_counts"], dtype=torch.float64)
    beta = 0.9999
    expected = (1 - beta) / (1 - beta**counts)
    expected = expected / expected.sum() * len(counts)
    assert seen[2] is not None
    assert torch.allclose(seen[2].double(), expected, rtol=1e-5)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, synthetic_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config("synthetic-lt-bs", overrides=[*FAST, "epochs=3", "log_every=1"])
    original = Trainer.train_step

    def poisoned(self: Trainer, x, y, t, class_weight):
        terms = original(self, x, y, t, class_weight)
        if t > 1.5:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match="diverged"):
        train_run(cfg, synthetic_data, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    from lwrcli.checkpoint.files import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").epoch == 1


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path, synthetic_data: Path) -> None:
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lwrcli",
        *train_args(
            "synthetic-lt-bs-lwr", synthetic_data, run, "epochs=1", "model.width=8", "device=cpu"
        ),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]  # rank 0 alone writes
    lines = lines[1:]
    manifest = json.loads((synthetic_data / "manifest.json").read_text())
    # Metrics are all-reduced: the epoch covers the whole train split (padded to 2 equal shards).
    n = manifest["splits"]["train"]
    assert lines[0]["images_per_s"] > 0
    assert lines[0]["test_top1"] is not None
    assert n > 0


@pytest.mark.slow
def test_ctrl_c_keeps_last_epoch_and_resume_finishes(tmp_path: Path, synthetic_data: Path) -> None:
    import os
    import signal
    import time

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lwrcli",
        *train_args("synthetic-lt-bs", synthetic_data, run, "epochs=40", "model.width=8"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    done = len(metrics.read_text().splitlines()) - 1  # past the epoch-0 geometry record
    assert 1 <= done < 40
    from lwrcli.checkpoint.files import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.safetensors").epoch == done
    # Resume continues from there; the saved config is shortened to one more epoch for speed.
    cfg = (run / "config.yaml").read_text().replace("epochs: 40", f"epochs: {done + 1}")
    (run / "config.yaml").write_text(cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "lwrcli", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(metrics.read_text().splitlines()) == done + 2  # epochs 0 .. done + 1


def test_parameter_counts_read_as_people_write_them() -> None:
    """Issue 24: 'trainable 20.5 k of 88 M parameters', never 'trainable 2e-05 M'."""
    from lwrcli.train.run import _parameters_note, human_count

    cases = {
        7: "7",
        950: "950",
        20_480: "20.5 k",
        999_700: "1 M",
        88_000_000: "88 M",
        85_798_656: "85.8 M",
        1_234_567_890: "1.23 B",
    }
    assert {n: human_count(n) for n in cases} == cases
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Linear(10, 2))
    model[0].requires_grad_(False)
    assert _parameters_note(model) == "trainable 22 of 1 M parameters"
    model[0].requires_grad_(True)
    assert _parameters_note(model) == "1,001,022 parameters"
