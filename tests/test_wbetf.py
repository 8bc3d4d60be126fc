"""Weight balancing (MaxNorm) and the fixed simplex-ETF head with dot regression: closed forms,
the authors' formulas re-done in numpy, refusals, and the two-stage chain through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args
from resume_scenario import cut_and_resume
from safetensors.torch import load_file

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.config import TrainConfig, load_config
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import read_manifest
from lwrcli.errors import UserError
from lwrcli.methods.dot_regression import DotRegression
from lwrcli.methods.etf import ETFHead, simplex_etf
from lwrcli.methods.losses import build_loss
from lwrcli.methods.maxnorm import MAX_NORM_RADIUS, MaxNorm, project_rows, relative_radius
from lwrcli.models import build_model, get_classifier
from lwrcli.train.build import build_components
from lwrcli.train.engine import Trainer
from lwrcli.train.resolve import resolve_config
from lwrcli.train.runlog import read_metrics

TINY = ["model.width=8", "batch_size=16", "eval_every=0", "log_every=1000", "device=cpu"]
C = 5


def _resolved(preset: str, data: Path, sets: list[str]) -> TrainConfig:
    """The config as `lwr train` resolves it for this dataset on the CPU (what
    build_components expects)."""
    m = read_manifest(data)
    cfg = load_config(preset, overrides=sets)
    return resolve_config(cfg, torch.device("cpu"), m.storage, m.num_classes, m.image_size).cfg


# --- the simplex ETF ---------------------------------------------------------------------------


@pytest.mark.parametrize("c, d", [(2, 1), (5, 4), (5, 32), (10, 64), (100, 99), (100, 128)])
def test_simplex_etf_is_unit_and_equiangular(c: int, d: int) -> None:
    w = simplex_etf(c, d, torch.Generator().manual_seed(c + d))
    assert w.shape == (c, d) and w.dtype == torch.float64
    gram = (w @ w.t()).numpy()
    closed = c / (c - 1) * (np.eye(c) - np.ones((c, c)) / c)  # diag 1, off-diag -1/(C-1)
    np.testing.assert_allclose(gram, closed, atol=1e-12)
    head = ETFHead(d, c, generator=torch.Generator().manual_seed(0))
    rows = head.weight.double()  # the float32 buffer the model keeps
    rows = rows / rows.norm(dim=1, keepdim=True)
    cos = (rows @ rows.t()).numpy()[~np.eye(c, dtype=bool)]
    assert np.abs(cos + 1.0 / (c - 1)).max() < 1e-6


def test_simplex_etf_needs_c_minus_1_dimensions() -> None:
    with pytest.raises(UserError, match="100 classes spans 99 dimensions.*features have 64"):
        simplex_etf(100, 64)
    cfg = load_config("cifar100-lt-ir100-etf", overrides=["model.resnet_width=16"])
    with pytest.raises(UserError, match="resnet_width=25"):
        build_model(cfg.model, 100)
    built = build_model(load_config("cifar100-lt-ir100-etf").model, 100)  # width 32: 128-d
    assert get_classifier(built).weight.shape == (100, 128)


def test_etf_head_is_a_buffer_seeded_by_the_run(small_val: Path) -> None:
    cfg = _resolved("synthetic-lt-etf", small_val, TINY)
    data = build_data(small_val, cfg, torch.device("cpu"))
    a = get_classifier(build_components(cfg, data, torch.device("cpu")).raw_model)
    b = get_classifier(build_components(cfg, data, torch.device("cpu")).raw_model)
    assert torch.equal(a.weight, b.weight)  # same seed, same simplex
    cfg1 = _resolved("synthetic-lt-etf", small_val, [*TINY, "seed=1"])
    other = get_classifier(build_components(cfg1, data, torch.device("cpu")).raw_model)
    assert not torch.equal(a.weight, other.weight)
    assert "weight" in dict(a.named_buffers()) and "weight" not in dict(a.named_parameters())


def test_etf_head_never_changes_while_the_backbone_trains(small_val: Path) -> None:
    cfg = _resolved("synthetic-lt-etf", small_val, TINY)
    device = torch.device("cpu")
    data = build_data(small_val, cfg, device)
    parts = build_components(cfg, data, device)
    trainer = Trainer(cfg, parts, device, run_dir=None)
    head = get_classifier(parts.raw_model)
    rows = head.weight.clone()
    conv = parts.raw_model.body[0].weight.detach().clone()
    trained = {id(p) for g in parts.optimizer.param_groups for p in g["params"]}
    assert id(head.weight) not in trained
    batches = iter(data.train)
    for step in range(3):
        x, y = next(batches)
        terms = trainer.train_step(x, y, 1.0 + step / 6, None)
        assert torch.isfinite(terms["loss"])
        assert torch.equal(head.weight, rows)  # bit-identical after every step
    assert not torch.equal(parts.raw_model.body[0].weight, conv)


# --- dot regression ----------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_dr_loss_is_the_papers_formula(weighted: bool) -> None:
    """ETF head + DR against the authors' reg_dot_loss re-done in float64 numpy: features
    through BatchNorm (eval: running statistics) and L2 normalisation, M the ETF's columns,
    ℓ = 1/2 (h·m_y - |m_y| |h|)^2 / |h|, averaged (weighted: Σ w_y ℓ / Σ w_y)."""
    g = torch.Generator().manual_seed(3)
    n, d = 12, 16
    head = ETFHead(d, C, generator=g).eval()
    with torch.no_grad():
        head.bn.running_mean.copy_(torch.randn(d, generator=g))
        head.bn.running_var.copy_(torch.rand(d, generator=g) + 0.5)
        head.bn.weight.copy_(torch.rand(d, generator=g) + 0.5)
        head.bn.bias.copy_(torch.randn(d, generator=g) * 0.1)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    w = torch.rand(C, generator=g) + 0.1
    counts = [40, 20, 10, 8, 5]
    got = DotRegression(counts)(head(x), y, w if weighted else None)

    bn = head.bn
    xs = x.double().numpy()
    feat = (xs - bn.running_mean.double().numpy()) / np.sqrt(
        bn.running_var.double().numpy() + bn.eps
    ) * bn.weight.detach().double().numpy() + bn.bias.detach().double().numpy()
    h = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    m = head.weight.double().numpy().T  # (d, C): the authors' cur_M
    target = m[:, y.numpy()].T
    dot = (h * target).sum(1)
    h_len = np.linalg.norm(h, axis=1)
    m_len = np.linalg.norm(target, axis=1)
    per = 0.5 * (dot - m_len * h_len) ** 2 / h_len
    wy = w.double().numpy()[y.numpy()] if weighted else np.ones(n)
    expected = float((wy * per).sum() / wy.sum())
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_dr_gradient_only_pulls_toward_the_target_vertex() -> None:
    """d ℓ / d z_c is (z_y - 1) / N for the target class and 0 for every other: no push."""
    z = torch.tensor([[0.2, -0.3, 0.5], [0.9, 0.1, -0.4]], requires_grad=True)
    y = torch.tensor([2, 0])
    DotRegression([3, 2, 1])(z, y).backward()
    expected = torch.zeros(2, 3)
    expected[0, 2], expected[1, 0] = (0.5 - 1) / 2, (0.9 - 1) / 2
    torch.testing.assert_close(z.grad, expected)


# --- MaxNorm -----------------------------------------------------------------------------------


def test_projection_caps_long_rows_and_leaves_the_rest_bit_identical() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 24, generator=g) * torch.linspace(0.1, 3.0, 50)[:, None]
    before = w.clone()
    radius = float(w.double().norm(dim=1).median())
    project_rows(w, radius)
    n_before = before.double().norm(dim=1)
    n_after = w.double().norm(dim=1)
    assert (n_after <= radius).all()
    inside = n_before <= radius
    assert inside.any() and (~inside).any()
    assert torch.equal(w[inside], before[inside])
    torch.testing.assert_close(
        n_after[~inside], torch.full_like(n_after[~inside], radius), rtol=1e-6, atol=0
    )
    cos = (w[~inside].double() * before[~inside].double()).sum(1) / (n_after * n_before)[~inside]
    torch.testing.assert_close(cos, torch.ones_like(cos))  # scaled, never turned


def test_relative_radius_is_the_authors_rule() -> None:
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # norms 5, 1, 2
    assert relative_radius(w, 0.1) == pytest.approx(1 + 0.1 * (5 - 1))
    assert relative_radius(w, 0.0) == 1.0 and relative_radius(w, 1.0) == 5.0


def test_maxnorm_holds_after_every_training_step(small_val: Path) -> None:
    cfg = _resolved("synthetic-lt-bs", small_val, [*TINY, "max_norm.radius=0.3"])
    device = torch.device("cpu")
    data = build_data(small_val, cfg, device)
    parts = build_components(cfg, data, device)
    (hook,) = parts.after_step
    assert isinstance(hook, MaxNorm) and hook.radius == 0.3
    assert float(parts.run_tensors[MAX_NORM_RADIUS]) == 0.3
    head = get_classifier(parts.raw_model)
    stepped: list[torch.Tensor] = []
    parts.after_step.insert(0, lambda: stepped.append(head.weight.detach().clone()))
    trainer = Trainer(cfg, parts, device, run_dir=None)
    bias = head.bias.detach().clone()
    batches = iter(data.train)
    seen_inside = seen_outside = False
    for step in range(4):
        x, y = next(batches)
        trainer.train_step(x, y, 1.0 + step / 6, None)
        raw = stepped[-1]  # after the optimizer step, before the projection
        inside = raw.double().norm(dim=1) <= 0.3
        seen_inside |= bool(inside.any())
        seen_outside |= bool((~inside).any())
        assert (head.weight.detach().double().norm(dim=1) <= 0.3).all()
        assert torch.equal(head.weight[inside], raw[inside])
    assert seen_inside and seen_outside
    assert not torch.equal(head.bias, bias)  # the bias trains, unprojected


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, message",
    [
        (["lwr.enabled=true"], "ETF head is fixed"),
        (["loss.name=ce", "model.head.name=linear"], None),
        (["model.head.name=linear"], "needs the fixed ETF head"),
        (["model.head.name=cosine"], "needs the fixed ETF head"),
        (["stage2.mode=crt", "init.reset_classifier=true"], "re-learn the classifier"),
        (["max_norm.radius=1.0"], "fixed at unit norm"),
        (["model.head.scale=16"], "not a setting of 'etf'"),
    ],
)
def test_etf_combinations_are_refused_with_a_reason(sets: list[str], message: str | None) -> None:
    if message is None:
        load_config("synthetic-lt-etf", overrides=sets)  # a plain learnable head again
        return
    with pytest.raises(UserError, match=message):
        load_config("synthetic-lt-etf", overrides=sets)


def test_maxnorm_refusals() -> None:
    with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
        load_config("synthetic-lt-wb", overrides=["max_norm.radius=1.5"])
    with pytest.raises(UserError, match="cosine classifier normalises"):
        load_config("synthetic-lt-bs", overrides=["max_norm.radius=1", "model.head.name=cosine"])


def test_lwr_with_an_etf_head_exits_2_through_the_cli(lwr, small_val: Path, tmp_path: Path) -> None:
    res = lwr(*train_args("synthetic-lt-etf", small_val, tmp_path / "r", *TINY, "lwr.enabled=true"))
    assert res.code == 2
    assert "lwr.enabled=true with model.head.name=etf" in res.err
    assert "Traceback" not in res.err and not (tmp_path / "r").exists()


def test_a_frozen_backbone_without_weights_is_refused(lwr, small_val: Path, tmp_path: Path) -> None:
    res = lwr(*train_args("synthetic-lt-wb", small_val, tmp_path / "r", *TINY))
    assert res.code == 2 and "--init" in res.err and not (tmp_path / "r").exists()


# --- end to end through the CLI ----------------------------------------------------------------


@pytest.fixture(scope="module")
def etf_ckpt(small_val: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch ETF + DR run through the CLI: its last checkpoint."""
    from lwrcli.cli.main import main

    run = tmp_path_factory.mktemp("etf") / "run"
    with pytest.raises(SystemExit) as done:
        main(train_args("synthetic-lt-etf", small_val, run, *TINY, "epochs=1"))
    assert done.value.code in (0, None)
    return run / "checkpoints" / "last.safetensors"


def test_analyze_weights_shows_the_simplex_exactly(
    lwr, small_val: Path, etf_ckpt: Path, tmp_path: Path
) -> None:
    state = load_file(etf_ckpt)
    assert "fc.weight" in state and "fc.bn.running_mean" in state
    res = lwr("analyze-weights", etf_ckpt, "--data", small_val, "--out", tmp_path / "an")
    assert res.code == 0, res.err
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    overall = summary["checkpoints"][0]["overall"]
    assert overall["pairs"] == C * (C - 1) // 2
    assert overall["mean"] == pytest.approx(-1 / (C - 1), abs=1e-6)
    assert overall["max"] == pytest.approx(-1 / (C - 1), abs=1e-6)  # so every pair is


@pytest.mark.slow
def test_an_etf_checkpoint_evaluates_and_exports(
    lwr, small_val: Path, etf_ckpt: Path, tmp_path: Path
) -> None:
    ckpt, state = etf_ckpt, load_file(etf_ckpt)
    assert lwr("eval", ckpt, "--data", small_val).code == 0
    res = lwr("eval", ckpt, "--data", small_val, "--tau-norm", "1.0")
    assert res.code == 0, res.err
    res = lwr("export", ckpt, "--format", "torchscript", "--out", tmp_path / "ts")
    assert res.code == 0, res.err
    exported = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    images = images.to(torch.uint8)
    cfg = load_checkpoint(ckpt).config
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    net = build_model(cfg.model, C)
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        reference = net((images.float() / 255 - mean) / std)
        torch.testing.assert_close(exported(images), reference, rtol=1e-4, atol=1e-5)
    assert reference.abs().max() <= 1 + 1e-6  # cosines
    ort = pytest.importorskip("onnxruntime")  # the export extra

    res = lwr("export", ckpt, "--format", "onnx", "--out", tmp_path / "onnx")
    assert res.code == 0, res.err
    session = ort.InferenceSession(
        str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def wb_stage1(small_val: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lwrcli.cli.main import main

    run = tmp_path_factory.mktemp("wb1") / "run"
    with pytest.raises(SystemExit) as done:
        main(train_args("synthetic-lt-wb-stage1", small_val, run, *TINY, "epochs=2"))
    assert done.value.code in (0, None)
    return run / "checkpoints" / "last.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["synthetic-lt-wb", "synthetic-lt-wb-lwr"])
def test_weight_balancing_stage_2_from_stage_1_through_the_cli(
    lwr, small_val: Path, wb_stage1: Path, tmp_path: Path, preset: str
) -> None:
    run = tmp_path / "wb"
    res = lwr(*train_args(preset, small_val, run, *TINY, "epochs=2"), "--init", wb_stage1)
    assert res.code == 0, res.err
    before, after = load_file(wb_stage1), load_file(run / "checkpoints" / "last.safetensors")
    for k, v in before.items():
        if not k.startswith("fc."):
            assert torch.equal(after[k], v), k  # frozen backbone, BatchNorm statistics too
    radius = float(after[MAX_NORM_RADIUS])
    assert radius == pytest.approx(relative_radius(before["fc.weight"], 0.1), rel=1e-12)
    assert (after["fc.weight"].double().norm(dim=1) <= radius).all()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    last = read_metrics(run / "metrics.jsonl")[-1]
    assert (last["lwr"] is not None) == preset.endswith("-lwr")
    assert lwr("eval", run / "checkpoints" / "last.safetensors", "--data", small_val).code == 0


@pytest.mark.slow
def test_a_relative_maxnorm_run_resumes_bit_exactly(
    small_val: Path, wb_stage1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sets = [*TINY, "epochs=2", "checkpoint_every_steps=2", f"init.checkpoint={wb_stage1}"]
    cfg = load_config("synthetic-lt-wb", overrides=sets)
    cut_and_resume(cfg, small_val, tmp_path, monkeypatch, holds=MAX_NORM_RADIUS)


def test_dr_loss_builds_from_the_config() -> None:
    cfg = load_config("synthetic-lt-etf").loss
    assert isinstance(build_loss(cfg, [4, 3, 2]), DotRegression)


def test_etf_head_trains_on_a_last_batch_of_one_image() -> None:
    head = ETFHead(8, C, generator=torch.Generator().manual_seed(0)).train()
    x = torch.randn(1, 8, requires_grad=True)
    z = head(x)
    z.sum().backward()
    assert z.shape == (1, C) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(head.eval()(x.detach()), z.detach())  # the running statistics


def test_etf_with_mixup_trains_on_soft_targets(lwr, small_val: Path, tmp_path: Path) -> None:
    """The CIFAR ETF recipes mix (alpha 1): dr takes the mixed targets, the head stays fixed."""
    run = tmp_path / "mix"
    res = lwr(
        *train_args("synthetic-lt-etf", small_val, run, *TINY, "epochs=1", "mixing.mixup_alpha=1")
    )
    assert res.code == 0, res.err
    after = load_file(run / "checkpoints" / "last.safetensors")["fc.weight"]
    rows = after.double() / after.double().norm(dim=1, keepdim=True)
    cos = (rows @ rows.t())[~torch.eye(C, dtype=torch.bool)]
    assert (cos + 1 / (C - 1)).abs().max() < 1e-6
