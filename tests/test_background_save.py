"""Checkpoints written off the training thread (issue 27): one write at a time and in order,
errors raised in the training thread, copies taken at the save point, the same files as a
synchronous save. Bit-exact resume with the writer on: tests/test_resume.py and every user of
tests/resume_scenario.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lwrcli.checkpoint.files import state_path
from lwrcli.checkpoint.resume import RunState, commit_resume_point, resume_snapshot
from lwrcli.checkpoint.resume import write_resume_point as real_write
from lwrcli.config import load_config
from lwrcli.runtime.background import BackgroundWriter
from lwrcli.train import saves
from lwrcli.train.run import train_run
from lwrcli.train.runlog import read_metrics

TINY = ["model.width=8", "batch_size=16", "device=cpu", "amp=none"]


def test_jobs_run_one_at_a_time_in_order() -> None:
    writer = BackgroundWriter()
    gate, order = threading.Event(), []

    def first() -> None:
        gate.wait()
        order.append("first")

    writer.submit(first)
    assert writer.busy  # held at the gate: the caller's thread went on
    gate.set()
    writer.submit(lambda: order.append("second"))  # waits for `first`, then starts
    writer.join()
    assert order == ["first", "second"] and not writer.busy
    writer.join()  # nothing in flight: returns at once


def test_a_failed_write_is_raised_in_the_callers_thread_once() -> None:
    writer = BackgroundWriter()

    def fail() -> None:
        raise OSError("No space left on device")

    ran = []
    writer.submit(fail)
    with pytest.raises(OSError, match="No space left"):
        writer.submit(lambda: ran.append(True))  # the next write never starts after a failure
    assert ran == []
    writer.submit(fail)
    with pytest.raises(OSError, match="No space left"):
        writer.join()
    writer.join()  # raised once


def test_a_snapshot_is_the_state_at_the_save_point(tmp_path: Path) -> None:
    """The steps after a save change weights and buffers in place; what the save writes is
    what they were when it was asked for, bit for bit the synchronous save's tensors."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    step()
    sums = torch.tensor([1.0, 2.0], dtype=torch.float64)
    weights = ({k: v for k, v in model.state_dict().items()}, {"format": "lwr-checkpoint-1"})
    run = RunState(epoch=1, step=3)
    (tmp_path / "sync").mkdir()
    (tmp_path / "later").mkdir()
    commit_resume_point(tmp_path / "sync", weights, opt, None, run, sums)
    point = resume_snapshot(weights, opt, None, run, sums)
    step()  # training goes on before the write ...
    sums += 5.0
    real_write(tmp_path / "later", point)  # ... which still holds the save point's values
    for name in ("last.safetensors", state_path(Path("last.safetensors")).name):
        a, b = load_file(str(tmp_path / "sync" / name)), load_file(str(tmp_path / "later" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not torch.equal(
        model.weight.detach(), load_file(str(tmp_path / "later" / "last.safetensors"))["weight"]
    )


def test_a_run_writes_the_same_files_as_with_synchronous_saves(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid-epoch (checkpoint_every_steps) and end-of-epoch saves, `epoch_N` copies and the
    metrics lines: the background writer leaves what an inline writer leaves."""
    cfg = load_config(
        "synthetic-lt-bs-lwr",
        overrides=[*TINY, "epochs=2", "checkpoint_every_steps=2", "save_every=1"],
    )
    train_run(cfg, small, tmp_path / "behind")

    def inline(self: BackgroundWriter, job: object) -> None:
        self.join()
        job()  # type: ignore[operator]

    monkeypatch.setattr(BackgroundWriter, "submit", inline)
    train_run(cfg, small, tmp_path / "inline")
    for name in ("last.safetensors", "last.state.safetensors", "epoch_1.safetensors"):
        a = load_file(str(tmp_path / "behind" / "checkpoints" / name))
        b = load_file(str(tmp_path / "inline" / "checkpoints" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    keep = ("epoch", "loss", "task", "lwr", "train_acc", "test_top1", "geom_cos_max")
    ra, rb = (read_metrics(tmp_path / r / "metrics.jsonl") for r in ("behind", "inline"))
    assert [{k: r.get(k) for k in keep} for r in ra] == [{k: r.get(k) for k in keep} for r in rb]
    assert [r["epoch"] for r in ra] == [0, 1, 2]


def test_a_failed_checkpoint_write_stops_the_run_with_its_error(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails on the writer thread is not lost: the run raises it (at the next
    save or at the end of fit), as a synchronous save did."""
    calls = []

    def full_disk(ckpt_dir: Path, point: object) -> None:
        calls.append(ckpt_dir)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saves, "write_resume_point", full_disk)
    cfg = load_config("synthetic-lt-bs", overrides=[*TINY, "epochs=3"])
    with pytest.raises(OSError, match="No space left"):
        train_run(cfg, small, tmp_path / "run")
    assert len(calls) == 1  # the run stopped at the failure, not three epochs later
    assert not (tmp_path / "run").exists()  # a start that saved nothing leaves nothing


def test_the_last_save_is_on_disk_when_fit_returns(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit waits for the writer: the run's last write, held back until fit has called
    finish_writes, is on disk when train_run returns."""
    from lwrcli.train.engine import Trainer

    finishing = threading.Event()
    original = Trainer.finish_writes

    def finish(self: Trainer) -> None:
        finishing.set()
        original(self)

    def held(ckpt_dir: Path, point: object) -> None:
        if len(list(ckpt_dir.glob("last.safetensors"))) == 1:  # the second save: hold it
            finishing.wait()
        real_write(ckpt_dir, point)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "finish_writes", finish)
    monkeypatch.setattr(saves, "write_resume_point", held)
    cfg = load_config("synthetic-lt-bs", overrides=[*TINY, "epochs=2"])
    train_run(cfg, small, tmp_path / "run")
    from lwrcli.checkpoint.files import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").epoch == 2
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 2]
