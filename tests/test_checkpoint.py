"""Checkpoints: safetensors round trip, metadata, atomic writes, damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lwrcli.checkpoint import (
    RunState,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    save_train_state,
    unwrap,
)
from lwrcli.config import TrainConfig
from lwrcli.errors import UserError


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


def test_train_state_round_trip(tmp_path: Path) -> None:
    """Optimizer buffers, the global RNG, the loader's generator and the run's progress come
    back exactly into freshly built pieces."""

    class Loader:
        def __init__(self) -> None:
            self.generator = torch.Generator().manual_seed(3)

        def state(self) -> torch.Tensor:
            return self.generator.get_state()

        def load_state(self, state: torch.Tensor) -> None:
            self.generator.set_state(state)

    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.fc(model.body(torch.randn(5, 3))).sum().backward()
    opt.step()
    loader = Loader()
    torch.rand(7, generator=loader.generator)
    save_train_state(tmp_path / "s.safetensors", opt, loader, RunState(4, 61.5, 3))
    expect_global, expect_loader = torch.rand(3), torch.rand(3, generator=loader.generator)

    torch.manual_seed(123)
    fresh_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh_loader = Loader()
    run = load_train_state(tmp_path / "s.safetensors", fresh_opt, fresh_loader, torch.device("cpu"))
    assert run == RunState(4, 61.5, 3)
    assert torch.equal(torch.rand(3), expect_global)
    assert torch.equal(torch.rand(3, generator=fresh_loader.generator), expect_loader)
    for p in model.parameters():
        a, b = opt.state[p]["momentum_buffer"], fresh_opt.state[p]["momentum_buffer"]
        assert torch.equal(a, b)
