"""The one stop-and-resume scenario every resume test runs: an uninterrupted run, the same run
stopped as by Ctrl-C during its n-th optimizer step (it saves where it stands), then resumed;
both must end with bit-identical weights, run tensors and metrics."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.train.engine import Interrupted, Trainer
from lwrcli.train.run import train_run
from lwrcli.train.runlog import read_metrics


def stop_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """As if Ctrl-C arrived during the n-th optimizer step of the next run (1-based)."""
    original = Trainer.train_step
    calls = {"n": 0}

    def step(self: Trainer, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            self._stop_signal = signal.SIGINT
        return original(self, *args)

    monkeypatch.setattr(Trainer, "train_step", step)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def assert_same_run(a: Path, b: Path, holds: str | None = None) -> None:
    """Same tensors (weights and `lwr_state.` run tensors) bit for bit, and the same metric
    records; `holds`: a text some checkpoint key must contain (what the test is about)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    if holds is not None:
        assert any(holds in k for k in wa), f"no {holds} tensor in the checkpoint"
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"tensors differ: {differ[:5]}"
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["epoch"] for r in rb] == [r["epoch"] for r in ra]
    assert ra[0]["epoch"] == 0  # the initial geometry survives the interruption too
    for x, y in zip(ra, rb, strict=True):
        assert x.get("loss") == y.get("loss") and x.get("test_top1") == y.get("test_top1")
        assert x.get("geom_cos_max") == y.get("geom_cos_max")


def cut_and_resume(
    cfg: Any,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: int = 3,
    holds: str | None = None,
) -> tuple[Path, Path]:
    """Run `cfg` whole into tmp_path/full; run it again into tmp_path/cut, stopped during
    optimizer step `step` (with checkpoint_every_steps=2 and step 3: inside epoch 1, one step
    past a step checkpoint), resume that, and assert both runs ended the same."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_run(cfg, data, full)
    stop_at_step(monkeypatch, step)
    with pytest.raises(Interrupted, match=f"step {step}"):
        train_run(cfg, data, cut)
    monkeypatch.undo()
    saved = load_checkpoint(cut / "checkpoints" / "last.safetensors")
    assert (saved.epoch, saved.step) == (0, step)
    train_run(None, None, resume=cut)  # type: ignore[arg-type]
    assert_same_run(full, cut, holds)
    return full, cut
