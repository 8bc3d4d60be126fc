"""Speed settings: `auto` resolved per device and model, recorded in the run; compile falls
back to eager with one line when it fails."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import train_args

import lwrcli.runtime.device as device
from lwrcli.config import TrainConfig, load_config
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import read_manifest
from lwrcli.runtime.device import eval_amp
from lwrcli.train.build import build_components
from lwrcli.train.engine import Trainer
from lwrcli.train.resolve import resolve_config, resolve_speed_settings
from lwrcli.use.evaluate import evaluate_checkpoint

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("model", "conv"),
    [
        ("resnet32", True),
        ("small_cnn", True),
        ("resnet50", True),
        ("torchvision:convnext_tiny", True),
        ("torchvision:vit_b_16", False),
        ("torchvision:swin_t", False),
    ],
)
def test_auto_on_cpu(model: str, conv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A CPU without native bf16 (on one with it amp auto is bf16: tests/test_bf16_auto.py).
    monkeypatch.setattr(device, "cpu_bf16_instructions", lambda: ())
    cfg = TrainConfig(model={"name": model})
    assert (cfg.amp, cfg.channels_last, cfg.compile, cfg.compile_mode) == ("auto",) * 4
    got = resolve_speed_settings(cfg, CPU, "arrays")
    assert got.amp == "none" and got.channels_last is conv
    assert got.compile is False and got.compile_mode == "default"
    assert resolve_speed_settings(got, CPU) == got  # resolving twice changes nothing


def test_concrete_values_are_kept() -> None:
    cfg = TrainConfig(amp="bf16", channels_last=False, compile=True, compile_mode="max-autotune")
    assert resolve_speed_settings(cfg, CPU) == cfg
    assert load_config("synthetic-lt-bs", overrides=["channels_last=false"]).channels_last is False


def test_eval_precision() -> None:
    assert eval_amp("bf16", CPU) == "none" and eval_amp("auto", CPU) == "none"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda() -> None:
    dev = torch.device("cuda", 0)
    got = resolve_speed_settings(TrainConfig(), dev, "arrays")
    assert got.amp == ("bf16" if torch.cuda.is_bf16_supported() else "none")
    assert got.channels_last is True and got.compile is True
    assert got.compile_mode == "default"  # reduce-overhead stays opt-in until measured
    assert resolve_speed_settings(TrainConfig(), dev, "lists").compile_mode == "default"
    assert eval_amp("bf16", dev) == "bf16"


@pytest.mark.slow
def test_resolved_values_are_recorded_and_bf16_checkpoint_evaluates_on_cpu(
    lwr, tmp_path: Path, synthetic_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device, "cpu_bf16_instructions", lambda: ())  # auto: fp32 here
    small = ("epochs=1", "model.width=8", "eval_every=0")
    r = lwr(*train_args("synthetic-lt-bs", synthetic_data, tmp_path / "a", *small))
    assert r.code == 0, r.err
    assert "amp none, channels_last on, compile off" in r.err
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert (saved["amp"], saved["channels_last"], saved["compile"]) == ("none", True, False)
    assert saved["compile_mode"] == "default"
    speed = json.loads((tmp_path / "a" / "run.json").read_text())["speed"]
    assert speed["amp"] == "none" and speed["channels_last"] is True
    assert speed["requested"] == "amp auto, channels_last auto, compile auto"
    # A checkpoint trained with amp=bf16 (as a GPU run records it) evaluates on CPU in fp32.
    r = lwr(*train_args("synthetic-lt-bs", synthetic_data, tmp_path / "b", *small, "amp=bf16"))
    assert r.code == 0, r.err
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["amp"] == "bf16"
    summary = evaluate_checkpoint(
        tmp_path / "b" / "checkpoints" / "last.safetensors", synthetic_data, device="cpu"
    )
    assert 0.0 <= summary["top1"] <= 100.0


def _two_steps(cfg: TrainConfig, data_dir: Path) -> dict[str, torch.Tensor]:
    manifest = read_manifest(data_dir)
    cfg = resolve_config(cfg, CPU, manifest.storage, manifest.num_classes, manifest.image_size).cfg
    data = build_data(data_dir, cfg, CPU)
    parts = build_components(cfg, data, CPU)
    trainer = Trainer(cfg, parts, CPU, run_dir=None)
    batches = iter(data.train)
    for _ in range(2):
        x, y = next(batches)
        trainer.train_step(x, y, 1.0, None)
    return {k: v.clone() for k, v in parts.raw_model.state_dict().items()}


def test_compile_failure_trains_in_eager_with_one_warning(
    synthetic_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The backward compiler fails (lazily, at the first backward): the trial step catches it,
    restores batch-norm statistics, and training is bit for bit the eager run."""
    from torch._dynamo.backends.common import aot_autograd

    def broken(gm: torch.fx.GraphModule, inputs: object) -> object:
        raise RuntimeError("no backward for you")

    backend = aot_autograd(fw_compiler=lambda gm, inputs: gm, bw_compiler=broken)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    over = ["device=cpu", "model.width=4", "batch_size=16"]
    eager = _two_steps(load_config("synthetic-lt-bs", overrides=over), synthetic_data)
    capsys.readouterr()
    torch._dynamo.reset()
    cfg = load_config("synthetic-lt-bs", overrides=[*over, "compile=true"])
    fell_back = _two_steps(cfg, synthetic_data)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "torch.compile failed" in ln]
    assert len(lines) == 1 and "eager" in lines[0]
    for key, value in eager.items():
        assert torch.equal(value, fell_back[key]), key


def test_compile_failing_at_first_call(
    synthetic_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def compile_that_fails(model: torch.nn.Module, **kwargs: object) -> object:
        def call(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor: no C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", compile_that_fails)
    cfg = load_config("synthetic-lt-bs", overrides=["model.width=4", "compile=true"])
    _two_steps(cfg, synthetic_data)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (RuntimeError: inductor: no C++ compiler") == 1


def test_compile_wrapper_passes_no_sync_to_ddp() -> None:
    """Gradient accumulation under torchrun calls model.no_sync(); with compile on, the model
    is the fallback wrapper around DDP, which must hand the call through."""
    import contextlib

    from lwrcli.train.build import CompileFallback

    calls = []

    class FakeDDP(torch.nn.Linear):
        def no_sync(self) -> contextlib.AbstractContextManager[None]:
            calls.append("no_sync")
            return contextlib.nullcontext()

    wrapped = CompileFallback(FakeDDP(2, 2), lambda x: x)
    with wrapped.no_sync():
        pass
    assert calls == ["no_sync"]
