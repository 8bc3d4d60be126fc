"""`amp: auto` on CPU (issue 27): bf16 where the CPU has native bf16 instructions, fp32
elsewhere, said at start-up; LWR stays fp32 inside a bf16 step; evaluation stays fp32 on CPU;
a run folder started under the old meaning of auto continues under the new one.

Every test here fixes what the CPU reports (monkeypatched), so the suite means the same on a
CPU with and without bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import train_args

import lwrcli.runtime.device as device
from lwrcli.config import TrainConfig, load_config
from lwrcli.data.loading import build_data
from lwrcli.train.build import build_components
from lwrcli.train.engine import Trainer
from lwrcli.train.lwr import lwr_penalty
from lwrcli.train.resolve import resolve_config, resolve_speed_settings

CPU = torch.device("cpu")
SMALL = ("epochs=1", "model.width=8", "eval_every=0", "device=cpu")


def cpu_reports(monkeypatch: pytest.MonkeyPatch, *instructions: str) -> None:
    """As if this CPU's feature detection found `instructions` (none: no native bf16)."""
    monkeypatch.setattr(device, "cpu_bf16_instructions", lambda: tuple(instructions))


def test_detection_reads_torchs_cpu_features_and_counts_only_native_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def detect(found: dict[str, bool]) -> tuple[str, ...]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: found, raising=False)
        device.cpu_bf16_instructions.cache_clear()
        return device.cpu_bf16_instructions()

    try:
        # AVX-512 without its bf16 extension (Skylake-X, Ice Lake): oneDNN would emulate.
        assert detect({"avx512_f": True, "avx512_bw": True, "avx2": True}) == ()
        assert detect({"avx512_f": True, "avx512_bf16": True}) == ("AVX512-BF16",)
        assert detect({"avx512_bf16": True, "amx_bf16": True}) == ("AVX512-BF16", "AMX-BF16")
        assert detect({"neon": True, "bf16": True}) == ()  # ARM: left out until measured
    finally:
        device.cpu_bf16_instructions.cache_clear()


def test_detection_without_torchs_cpu_features_reads_proc_cpuinfo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Older torch has no torch.cpu.get_capabilities: Linux's flags line decides."""
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    real_read = Path.read_text

    def cpuinfo(text: str) -> tuple[str, ...]:
        def read(self: Path, *args: object, **kwargs: object) -> str:
            if str(self) == "/proc/cpuinfo":
                return text
            return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", read)
        device.cpu_bf16_instructions.cache_clear()
        return device.cpu_bf16_instructions()

    try:
        assert cpuinfo("model name\t: X\nflags\t\t: fpu avx2 avx512f avx512bw\n") == ()
        assert cpuinfo("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n") == ("AVX512-BF16",)
        # A word inside another flag is no flag: only whole words count.
        assert cpuinfo("flags\t\t: no_avx512_bf16_here\n") == ()
    finally:
        device.cpu_bf16_instructions.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_given_values_are_kept(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    cpu_reports(monkeypatch, *(("AVX512-BF16",) if native else ()))
    got = resolve_speed_settings(TrainConfig(model={"name": "resnet32"}), CPU)
    assert got.amp == ("bf16" if native else "none")
    assert resolve_speed_settings(got, CPU) == got  # resolving twice changes nothing
    for amp in ("none", "bf16"):  # `--set amp=...` is never overridden
        assert resolve_speed_settings(TrainConfig(amp=amp), CPU).amp == amp
    amp, why = device.auto_amp(CPU)
    assert amp == got.amp
    if native:
        assert "bf16" in why and "AVX512-BF16" in why and "--set amp=none" in why
    else:
        assert "fp32" in why and "no native bf16" in why and "emulated" in why
    # Evaluation on CPU stays fp32 whatever the run trained in (lwr eval's rule).
    assert device.eval_amp(got.amp, CPU) == "none"


@pytest.mark.parametrize("native", [True, False])
def test_the_start_up_line_says_which_and_why(
    lwr, tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    cpu_reports(monkeypatch, *(("AVX512-BF16",) if native else ()))
    r = lwr(*train_args("synthetic-lt-bs", small, tmp_path / "run", *SMALL))
    assert r.code == 0, r.err
    text = " ".join(r.err.split())
    chosen = "bf16" if native else "none"
    assert f"amp {chosen}, channels_last on, compile off (asked: amp auto" in text
    if native:
        assert "amp auto chose bf16: this CPU has native bf16 instructions (AVX512-BF16)" in text
    else:
        assert "amp auto chose fp32: this CPU has no native bf16 instructions" in text
    assert "Warning: amp=bf16" not in text
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["amp"] == chosen
    # `--set amp=none` keeps fp32 on any CPU, and no reason is printed for a given value.
    r = lwr(*train_args("synthetic-lt-bs", small, tmp_path / "fp32", *SMALL, "amp=none"))
    assert r.code == 0, r.err
    assert "amp none," in r.err and "amp auto chose" not in r.err


def test_a_run_started_under_the_old_auto_continues_under_the_new_one(
    lwr, tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose run resolved auto to fp32 (an older lwr, or another CPU) continues with
    fp32 when the same command is run again where auto means bf16; a value given on the
    command line that differs is still another run."""
    run = tmp_path / "run"
    cpu_reports(monkeypatch)
    r = lwr(*train_args("synthetic-lt-bs", small, run, *SMALL))
    assert r.code == 0, r.err
    more = ("epochs=2", *SMALL[1:])
    cpu_reports(monkeypatch, "AVX512-BF16")
    r = lwr(*train_args("synthetic-lt-bs", small, run, *more))
    assert r.code == 2 and "epochs" in r.err  # a real difference is still refused
    r = lwr(*train_args("synthetic-lt-bs", small, run, "epochs=1", *SMALL[1:]))
    assert r.code == 0, r.err
    assert "already finished" in r.err  # the same command: the same (finished) run
    r = lwr(*train_args("synthetic-lt-bs", small, run, *SMALL, "amp=bf16"))
    assert r.code == 2 and "amp" in r.err  # asked for explicitly: another run
    assert yaml.safe_load((run / "config.yaml").read_text())["amp"] == "none"


def test_a_run_continued_keeps_the_precision_it_started_with(
    tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after epoch 1 under fp32-auto, continued by the same command under bf16-auto:
    the continuation trains in fp32, as the run began."""
    from lwrcli.train.engine import Interrupted
    from lwrcli.train.run import train_run

    cfg = load_config("synthetic-lt-bs", overrides=["epochs=2", *SMALL[1:]])
    cpu_reports(monkeypatch)
    seen: list[str] = []
    original = Trainer.train_epoch

    def epoch_then_stop(self: Trainer, epoch: int) -> dict[str, object]:
        seen.append(self.cfg.amp)
        out = original(self, epoch)
        if epoch == 0 and len(seen) == 1:
            self._stop_signal = 2
        return out

    monkeypatch.setattr(Trainer, "train_epoch", epoch_then_stop)
    with pytest.raises(Interrupted):
        train_run(cfg, small, tmp_path / "run")
    cpu_reports(monkeypatch, "AVX512-BF16")
    train_run(cfg, small, tmp_path / "run")
    assert seen == ["none", "none"]


def test_lwr_stays_fp32_inside_a_bf16_step(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With amp=bf16 the model's logits are bf16, while R, λR and LWR's gradient on the head
    are the fp32 computation on the fp32 weights, bit for bit."""
    cfg = load_config("synthetic-lt-bs-lwr", overrides=["amp=bf16", "lwr.theta=0.0", *SMALL])
    cfg = resolve_config(cfg, CPU, "arrays", 5, 32).cfg
    data = build_data(small, cfg, CPU)
    parts = build_components(cfg, data, CPU)
    trainer = Trainer(cfg, parts, CPU, run_dir=None)
    head = trainer.classifier.weight
    regularizer = trainer.regularizer
    assert regularizer is not None
    logits: list[torch.dtype] = []
    trainer.model.register_forward_hook(lambda m, i, out: logits.append(out.dtype))
    lwr_terms: list[torch.Tensor] = []

    def spy(weight: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        out = regularizer(weight, t)
        assert out is not None
        lwr_terms.append(out[0])
        return out

    trainer.regularizer = spy  # type: ignore[assignment]
    grads: list[torch.Tensor] = []
    own_grad = trainer._lwr_grad

    def grad_spy(lam_r: torch.Tensor) -> list[torch.Tensor]:
        grads.extend(own_grad(lam_r))
        return grads

    trainer._lwr_grad = grad_spy  # type: ignore[method-assign]
    x, y = next(iter(data.train))
    before = head.detach().clone()
    t = 3.0
    lam = regularizer.lam(t)
    expected_r = lwr_penalty(before, 0.0, cfg.lwr.power, cfg.lwr.proj, cfg.lwr.block_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # R itself turns autocast off
        inside = lwr_penalty(before, 0.0, cfg.lwr.power, cfg.lwr.proj, cfg.lwr.block_size)
    assert inside.dtype == torch.float32 and torch.equal(inside, expected_r)
    w = before.clone().requires_grad_(True)
    (expected_grad,) = torch.autograd.grad(
        lam * lwr_penalty(w, 0.0, cfg.lwr.power, cfg.lwr.proj, cfg.lwr.block_size), w
    )
    trainer._measure_share = True  # the step also takes LWR's own gradient (its share)
    terms = trainer.train_step(x, y, t, None)
    assert logits == [torch.bfloat16]  # the step did run under bf16 autocast
    assert lam > 0 and terms["lwr"].dtype == torch.float32
    assert torch.equal(terms["lwr"], expected_r)
    assert lwr_terms[0].dtype == torch.float32
    # LWR's part of the head's gradient, from the step's own graph: fp32 and exact.
    assert len(grads) == 1 and grads[0].dtype == torch.float32
    assert torch.equal(grads[0], expected_grad)
    assert head.grad is not None and head.grad.dtype == torch.float32
