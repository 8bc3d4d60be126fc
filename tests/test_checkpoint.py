"""Checkpoints: safetensors round trip, metadata, atomic writes, damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lwrcli.checkpoint.files import checkpoint_payload, load_checkpoint, save_checkpoint
from lwrcli.checkpoint.resume import RunState, commit_resume_point, load_train_state, resume_point
from lwrcli.config import TrainConfig
from lwrcli.errors import UserError
from lwrcli.runtime.modules import unwrap


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(3, 4)
        self.fc = torch.nn.Linear(4, 2)


def _save(path: Path, model: torch.nn.Module | None = None) -> torch.nn.Module:
    model = model or Tiny()
    save_checkpoint(
        path, model, TrainConfig(epochs=3), [10, 2], ["a", "b"], 2, {"x": 1.5}, "fc.weight"
    )
    return model


def test_round_trip(tmp_path: Path) -> None:
    model = _save(tmp_path / "c.safetensors")
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.config.epochs == 3 and ckpt.epoch == 2 and ckpt.metrics == {"x": 1.5}
    assert ckpt.class_counts == [10, 2] and ckpt.class_names == ["a", "b"]
    assert torch.equal(ckpt.classifier_weight, model.fc.weight)
    assert not (tmp_path / "c.safetensors").read_bytes().startswith(b"\x80")  # not a pickle


def test_wrappers_are_stripped(tmp_path: Path) -> None:
    model = Tiny()
    wrapped = torch.nn.Module()
    wrapped.module = model  # what DDP looks like
    assert unwrap(wrapped) is model
    _save(tmp_path / "c.safetensors", wrapped)
    keys = set(load_checkpoint(tmp_path / "c.safetensors").state)
    assert keys == {"body.weight", "body.bias", "fc.weight", "fc.bias"}


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    _save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated, corrupted"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not an lwr checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_atomic_write_leaves_no_temp_and_keeps_old_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    _save(path)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        save_checkpoint(path, Tiny(), TrainConfig(), [1, 1], ["a", "b"], 1, {}, "nope.weight")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


class Loader:
    """The loader side of the resume contract: a generator and a position."""

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(3)
        self.position = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state(), "position": torch.tensor([self.position])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.position = int(state["position"])


def _commit(ckpt_dir: Path, model: Tiny, opt: torch.optim.Optimizer, epoch: int, step: int = 0):
    run = RunState(epoch, step, 61.5, 3)
    weights = checkpoint_payload(
        model,
        TrainConfig(epochs=9),
        [10, 2],
        ["a", "b"],
        epoch,
        {"epoch": epoch},
        "fc.weight",
        extra={"step": str(step)},
    )
    commit_resume_point(ckpt_dir, weights, opt, Loader(), run, torch.arange(5.0))


def test_train_state_round_trip(tmp_path: Path) -> None:
    """Optimizer buffers, the global RNG, the loader's generator and position, the epoch's
    sums and the run's progress come back exactly into freshly built pieces."""
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.fc(model.body(torch.randn(5, 3))).sum().backward()
    opt.step()
    loader = Loader()
    torch.rand(7, generator=loader.generator)
    loader.position = 4
    run = RunState(4, 17, 61.5, 3)
    weights = checkpoint_payload(model, TrainConfig(), [10, 2], ["a", "b"], 4, {}, "fc.weight")
    commit_resume_point(tmp_path, weights, opt, loader, run, torch.arange(5.0))
    expect_global, expect_loader = torch.rand(3), torch.rand(3, generator=loader.generator)

    torch.manual_seed(123)
    fresh_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh_loader = Loader()
    ckpt, state = resume_point(tmp_path)
    got, sums = load_train_state(state, fresh_opt, fresh_loader, torch.device("cpu"))
    assert got == run and fresh_loader.position == 4 and ckpt.epoch == 4
    assert sums is not None and torch.equal(sums, torch.arange(5.0))
    assert torch.equal(torch.rand(3), expect_global)
    assert torch.equal(torch.rand(3, generator=fresh_loader.generator), expect_loader)
    for p in model.parameters():
        a, b = opt.state[p]["momentum_buffer"], fresh_opt.state[p]["momentum_buffer"]
        assert torch.equal(a, b)


def _phases(tmp_path: Path) -> dict[str, dict[str, bytes]]:
    """The files on disk after each instant of a save at which a process can die: the commit
    renames are replayed one by one from a real save."""
    model, ckpt_dir = Tiny(), tmp_path / "ck"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _commit(ckpt_dir, model, opt, 1)
    old = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    torch.nn.init.zeros_(model.fc.weight)
    _commit(ckpt_dir, model, opt, 2)
    new = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    w, s, prev = "last.safetensors", "last.state.safetensors", "last.state.prev.safetensors"
    return {
        "before the renames": {w: old[w], s: old[s]},
        "after the old state moved": {w: old[w], prev: old[s]},
        "between the two files": {w: old[w], s: new[s], prev: old[s]},
        "after the commit": {w: new[w], s: new[s], prev: old[s]},
    }


def test_a_kill_at_any_instant_of_a_save_leaves_a_matching_pair(tmp_path: Path) -> None:
    for i, (phase, files) in enumerate(_phases(tmp_path).items()):
        folder = tmp_path / f"p{i}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        ckpt, state = resume_point(folder)
        expect = 2 if phase == "after the commit" else 1
        assert ckpt.epoch == expect, phase
        got, _ = load_train_state(
            state, torch.optim.SGD(Tiny().parameters(), lr=0.1), Loader(), torch.device("cpu")
        )
        assert got.epoch == expect, phase
        assert state.name == "last.state.safetensors" and state.is_file()


def test_mismatched_pair_is_refused(tmp_path: Path) -> None:
    phases = _phases(tmp_path)
    folder = tmp_path / "bad"
    folder.mkdir()
    # New weights beside a state of an older save, and no .prev: no consistent pair.
    (folder / "last.safetensors").write_bytes(phases["after the commit"]["last.safetensors"])
    (folder / "last.state.safetensors").write_bytes(
        phases["before the renames"]["last.state.safetensors"]
    )
    with pytest.raises(UserError, match="no resume-state file from the same save"):
        resume_point(folder)


def test_an_interrupted_write_leaves_the_old_pair_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _commit(tmp_path, model, opt, 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import lwrcli.checkpoint.files as ck

    calls = []

    def interrupted_save(tensors, path, metadata=None):  # a Ctrl-C inside the second write
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(tensors, path, metadata=metadata)

    real = ck.save_file
    monkeypatch.setattr(ck, "save_file", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        _commit(tmp_path, model, opt, 2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
