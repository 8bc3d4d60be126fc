"""Where an epoch's time goes (issue 27): the phase timers behind LWR_PHASE_TIMES, off by
default, and `images_per_s` counting the whole epoch, not only its steps."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from conftest import train_args

from lwrcli.config import load_config
from lwrcli.runtime import timing
from lwrcli.train.run import train_run
from lwrcli.train.runlog import read_metrics

CPU = torch.device("cpu")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_by_default_and_then_every_hook_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in (None, "", "0"):
        if value is None:
            monkeypatch.delenv(timing.ENV, raising=False)
        else:
            monkeypatch.setenv(timing.ENV, value)
        timer = timing.phase_timer(CPU)
        assert timer is timing.OFF and not timer.enabled
    batches = iter([1, 2])
    assert timing.OFF.wrap(batches) is batches  # the loader's own iterator, untouched
    assert timing.OFF("steps") is timing.OFF("data")  # one shared no-op context
    before = len(timing.RECORDS)
    timing.OFF.start_epoch()
    timing.OFF.end_epoch(1, 128.0)
    assert len(timing.RECORDS) == before
    monkeypatch.setenv(timing.ENV, "1")
    assert isinstance(timing.phase_timer(CPU), timing.PhaseTimer)


def test_a_file_path_also_gets_each_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LWR_PHASE_TIMES=PATH: the records, as JSON lines, for a reader in another process."""
    import json

    path = tmp_path / "phases.jsonl"
    monkeypatch.setenv(timing.ENV, str(path))
    timer = timing.phase_timer(CPU)
    for epoch in (1, 2):
        timer.start_epoch()
        with timer("steps"):
            pass
        timer.end_epoch(epoch, 64.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == timing.RECORDS[-2:] and [r["epoch"] for r in lines] == [1, 2]


def test_phases_and_other_add_up_to_the_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock))
    lines: list[str] = []
    timer = timing.PhaseTimer(CPU, lines.append)

    def loader() -> object:
        for item in ("a", "b", "c"):
            clock.now += 0.5  # each batch takes 0.5 s to make
            yield item

    timer.start_epoch()
    for _ in timer.wrap(loader()):
        with timer("steps"):
            clock.now += 2.0
        clock.now += 0.25  # bookkeeping no phase covers
    with timer("geometry"):
        clock.now += 0.1
    with timer("checkpoint"):
        clock.now += 0.4
    timer.end_epoch(1, 384.0)
    record = timing.RECORDS[-1]
    assert record["epoch"] == 1 and record["images"] == 384.0
    assert record["wall_s"] == pytest.approx(3 * 2.75 + 0.5)
    phases = record["phases"]
    assert phases["steps"] == pytest.approx(6.0) and phases["data"] == pytest.approx(1.5)
    assert phases["geometry"] == pytest.approx(0.1) and phases["checkpoint"] == pytest.approx(0.4)
    assert phases["other"] == pytest.approx(0.75) and phases["eval"] == 0.0
    assert sum(phases.values()) == pytest.approx(record["wall_s"])
    assert lines and lines[0].startswith("epoch 1 phases (8.75 s): steps 6.00 s (69%)")
    # The next epoch starts from zero.
    timer.start_epoch()
    timer.end_epoch(2, 0.0)
    assert timing.RECORDS[-1]["phases"]["steps"] == 0.0


def test_a_timed_run_reports_each_epoch_and_images_per_s_counts_the_whole_epoch(
    lwr, tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """images_per_s = images / epoch_time_s, and epoch_time_s runs from the end of the last
    evaluation to this epoch's geometry record: it holds this epoch's steps, batches and
    geometry and the last epoch's checkpoint write, never an evaluation."""
    monkeypatch.setenv(timing.ENV, "1")
    first = len(timing.RECORDS)
    sets = ("epochs=3", "model.width=8", "eval_every=1", "device=cpu", "amp=none")
    r = lwr(*train_args("synthetic-lt-bs", small, tmp_path / "run", *sets))
    assert r.code == 0, r.err
    assert [ln.split(" (")[0] for ln in r.err.splitlines() if " phases (" in ln] == [
        f"epoch {e} phases" for e in (1, 2, 3)
    ]
    timed = timing.RECORDS[first:]
    epochs = [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if m["epoch"] > 0]
    assert [t["epoch"] for t in timed] == [m["epoch"] for m in epochs] == [1, 2, 3]
    for k, (t, m) in enumerate(zip(timed, epochs)):
        ph = t["phases"]
        assert set(ph) == {*timing.PHASES, "other"}
        assert ph["steps"] > 0 and ph["eval"] > 0 and ph["checkpoint"] > 0 and ph["data"] > 0
        assert m["images_per_s"] == pytest.approx(t["images"] / m["epoch_time_s"], rel=1e-12)
        assert t["images"] == 90  # the small set's 90 train images, every epoch
        inside = ph["steps"] + ph["data"] + ph["geometry"]
        if k > 0:
            inside += timed[k - 1]["phases"]["checkpoint"]  # the last epoch's save
        assert m["epoch_time_s"] >= inside


def test_the_epoch_clock_holds_saves_and_geometry_but_no_evaluation(
    tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's clock jumps by a known amount inside each part (no waiting): evaluation
    (+1000 s) never reaches epoch_time_s; a save (+100 s) counts in the next epoch, the
    geometry record (+10 s) in its own (the initial record's in epoch 1)."""
    import time

    from lwrcli.train import engine
    from lwrcli.train.engine import Trainer

    jump = {"s": 0.0}
    fake = types.SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + jump["s"], monotonic=time.monotonic
    )
    monkeypatch.setattr(engine, "time", fake)

    def after(name: str, seconds: float) -> None:
        original = getattr(Trainer, name)

        def wrapped(self: Trainer, *args: object) -> object:
            out = original(self, *args)
            jump["s"] += seconds
            return out

        monkeypatch.setattr(Trainer, name, wrapped)

    after("evaluate", 1000.0)
    after("_save", 100.0)
    after("_geometry", 10.0)
    cfg = load_config(
        "synthetic-lt-bs", overrides=["epochs=3", "model.width=8", "eval_every=1", "amp=none"]
    )
    train_run(cfg, small, tmp_path / "run")
    took = [m["epoch_time_s"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")[1:]]
    assert 20.0 <= took[0] < 1000.0  # the initial and the first geometry records
    assert all(110.0 <= t < 1000.0 for t in took[1:])  # the last save and its own geometry


def test_timers_off_leave_the_run_bit_for_bit_the_same(
    tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    cfg = load_config(
        "synthetic-lt-bs-lwr", overrides=["epochs=1", "model.width=8", "amp=none", "device=cpu"]
    )
    monkeypatch.delenv(timing.ENV, raising=False)
    train_run(cfg, small, tmp_path / "off")
    monkeypatch.setenv(timing.ENV, "1")
    train_run(cfg, small, tmp_path / "on")
    a = load_file(str(tmp_path / "off" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "on" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
