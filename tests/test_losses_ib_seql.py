"""Influence-balanced loss and softmax equalization loss against independent computations:
numpy float64 formulas, the IB authors' code re-typed, finite differences; the head-feature
capture (no leak, evaluation unchanged, through the DDP and compile wrappers); the seeded
SEQL draws; refusals; a tiny CLI run with each."""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import train_args

from lwrcli.config import LossSection, load_config, loss_section, migrate
from lwrcli.errors import UserError
from lwrcli.methods.ib import FeatureCapture, InfluenceBalancedLoss
from lwrcli.methods.losses import build_loss
from lwrcli.methods.seql import (
    SoftmaxEqualizationLoss,
    draw_drops,
    equalized_cross_entropy,
    position_seed,
    tail_classes,
)
from lwrcli.train.build import CompileFallback
from lwrcli.train.runlog import read_metrics

COUNTS = [500, 120, 40, 9, 2]


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def head_batch(seed: int = 0, n: int = 12, c: int = 5, d: int = 7):
    """Features h (N, d) float64, a float64 linear head, labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, dtype=torch.float64, generator=g).relu() + 0.05
    head = torch.nn.Linear(d, c).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, dtype=torch.float64, generator=g))
        head.bias.copy_(torch.randn(c, dtype=torch.float64, generator=g))
    y = torch.randint(0, c, (n,), generator=g)
    return h, head, y


def ib_with_capture(cfg: LossSection, head: torch.nn.Module) -> InfluenceBalancedLoss:
    loss = build_loss(cfg, COUNTS)
    assert isinstance(loss, InfluenceBalancedLoss)
    loss.features = FeatureCapture(head)
    return loss


# --- IB: the formula ------------------------------------------------------------------------


def np_ib(z, y, h, alpha, eps, w) -> float:
    """Park et al.'s influence-balanced loss in float64 numpy: the influence of sample i is
    |∇_W CE_i|_1 = |p_i - e_{y_i}|_1 |h_i|_1 for a linear head; the loss is the plain mean of
    w_{y_i} CE_i α / (influence_i + ε)."""
    n, c = z.shape
    p = np_softmax(z)
    onehot = np.eye(c)[y]
    influence = np.abs(p - onehot).sum(1) * np.abs(h).sum(1)
    ce = -np.log(p[np.arange(n), y])
    wy = np.ones(n) if w is None else w[y]
    return float(np.mean(wy * ce * alpha / (influence + eps)))


def authors_ib(z: torch.Tensor, y: torch.Tensor, h: torch.Tensor, alpha, eps, weight):
    """The authors' code, re-typed (github.com/pseulki/IB-Loss @ e15d390, losses.py):

        grads = torch.sum(torch.abs(F.softmax(input, dim=1) - F.one_hot(target, num_classes)),1)
        ib = grads*features.reshape(-1)
        ib = self.alpha / (ib + self.epsilon)
        return ib_loss(F.cross_entropy(input, target, reduction='none', weight=self.weight), ib)

    with ib_loss = (input_values * ib).mean(), and from models/resnet_cifar.py
    `torch.sum(torch.abs(out1), 1).reshape(-1, 1)` as `features` (out1: the head's input)."""
    features = torch.sum(torch.abs(h), 1).reshape(-1, 1)
    grads = torch.sum(torch.abs(F.softmax(z, dim=1) - F.one_hot(y, z.shape[1])), 1)
    ib = grads * features.reshape(-1)
    ib = alpha / (ib + eps)
    return (F.cross_entropy(z, y, reduction="none", weight=weight) * ib).mean()


@pytest.mark.parametrize("class_weight", ["inverse", "none"])
def test_ib_matches_numpy_and_the_authors_code(class_weight: str) -> None:
    h, head, y = head_batch(seed=1)
    cfg = loss_section(name="ib", start_epoch=3, alpha=1000.0, class_weight=class_weight)
    loss = ib_with_capture(cfg, head)
    loss.set_position(3, 0)
    z = head(h)
    got = loss(z, y).detach()
    n = np.asarray(COUNTS, dtype=np.float64)
    w = (1 / n) / (1 / n).sum() * len(n) if class_weight == "inverse" else None
    expected = np_ib(z.detach().numpy(), y.numpy(), h.numpy(), 1000.0, 0.001, w)
    # The inverse-frequency weights are a float32 buffer: agreement to float32's precision.
    assert float(got) == pytest.approx(expected, rel=1e-6 if w is not None else 1e-12)
    wt = None if w is None else torch.tensor(w)
    reference = authors_ib(z, y, h, 1000.0, 0.001, wt).detach()
    assert float(got) == pytest.approx(float(reference), rel=1e-6)


def test_ib_gradients_equal_the_authors_code() -> None:
    """The factor is not detached in the authors' code: gradients w.r.t. the logits and the
    features (hence the backbone) flow through it too, here as there."""
    h, head, y = head_batch(seed=2)
    loss = ib_with_capture(loss_section(name="ib", start_epoch=0, class_weight="none"), head)
    h1 = h.clone().requires_grad_(True)
    z1 = head(h1)
    z1.retain_grad()
    loss(z1, y).backward()
    h2 = h.clone().requires_grad_(True)
    z2 = head(h2)
    z2.retain_grad()
    authors_ib(z2, y, h2, 1000.0, 0.001, None).backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-10, atol=0)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=0)


def test_ib_is_plain_cross_entropy_before_its_switch_epoch() -> None:
    h, head, y = head_batch(seed=3)
    loss = ib_with_capture(loss_section(name="ib", start_epoch=5), head)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    for epoch in range(5):
        loss.set_position(epoch, 7)
        z = head(h)
        assert not loss.active
        assert float(loss(z, y)) == float(F.cross_entropy(z, y))
        z = head(h)
        # A re-weighting schedule's weight (loss.reweight=drw, IB + CB) applies as in CE.
        assert float(loss(z, y, w)) == float(F.cross_entropy(z, y, weight=w))
    loss.set_position(5, 0)
    z = head(h)
    assert loss.active
    n = np.asarray(COUNTS, dtype=np.float64)
    w_inv = (1 / n) / (1 / n).sum() * len(n)
    expected = np_ib(z.detach().numpy(), y.numpy(), h.numpy(), 1000.0, 0.001, w_inv)
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-6)


def test_ib_without_the_head_features_is_an_error_not_a_wrong_loss() -> None:
    loss = build_loss(loss_section(name="ib", start_epoch=0), COUNTS)
    with pytest.raises(RuntimeError, match="head's input"):
        loss(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))


# --- the feature capture ------------------------------------------------------------------


def small_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 9), torch.nn.BatchNorm1d(9), torch.nn.ReLU(), torch.nn.Linear(9, 5)
    )


def test_capture_keeps_nothing_in_evaluation_and_leaves_outputs_unchanged() -> None:
    net, plain = small_net(), small_net()
    capture = FeatureCapture(net[3])
    x = torch.randn(8, 6)
    net.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))
    assert capture.features is None
    net.train(), plain.train()
    with torch.no_grad():  # training mode but no gradients (a stage-2 feature pass): nothing
        net(x)
    assert capture.features is None
    out = net(x)
    assert torch.equal(out, plain(x))
    expected = net[2](net[1](net[0](x)))
    assert torch.equal(capture.take(), expected)
    assert capture.features is None
    capture.remove()
    net(x)
    assert capture.features is None


def test_capture_does_not_keep_a_step_alive() -> None:
    """After each IB step nothing refers to that step's activations: the captured tensor is
    freed as soon as the step's own references go (also in the CE phase)."""
    net = small_net()
    loss = build_loss(loss_section(name="ib", start_epoch=2), COUNTS)
    loss.features = FeatureCapture(net[3])
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 0])
    for epoch in range(4):
        loss.set_position(epoch, 0)
        out = net(torch.randn(8, 6))
        ref = weakref.ref(loss.features.features)
        value = loss(out, y)
        assert loss.features.features is None
        opt.zero_grad()
        value.backward()
        opt.step()
        del out, value
        gc.collect()
        assert ref() is None, f"epoch {epoch}: the captured features outlived their step"


def test_capture_sees_through_the_compile_fallback_and_ddp(tmp_path: Path) -> None:
    net = small_net()
    capture = FeatureCapture(net[3])
    x = torch.randn(8, 6)
    expected = net[2](net[1](net[0](x))).detach()

    def broken(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no compiler here")

    fallback = CompileFallback(net, broken, log=lambda _: None)
    fallback(x)
    torch.testing.assert_close(capture.take(), expected)
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        ddp(x)
        torch.testing.assert_close(capture.take(), expected)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ib_under_torch_compile_matches_eager() -> None:
    """The pre-hook inside a compiled graph: same features, same IB gradients as eager."""
    cfg = loss_section(name="ib", start_epoch=0, class_weight="none")
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 0])
    x = torch.randn(8, 6)
    grads = []
    for compiled in (False, True):
        net = small_net()
        loss = build_loss(cfg, COUNTS)
        loss.features = FeatureCapture(net[3])
        logs: list[str] = []
        model = CompileFallback(net, torch.compile(net), logs.append) if compiled else net
        loss(model(x), y).backward()
        assert not logs, logs  # compiled for real, no fallback
        grads.append([p.grad.clone() for p in net.parameters()])
    # Float32 kernels fused differently: agreement to float32 rounding of the largest
    # gradient (the bias before batch norm has a gradient of zero up to that rounding).
    scale = max(float(g.abs().max()) for g in grads[0])
    for eager, comp in zip(*grads, strict=True):
        torch.testing.assert_close(comp, eager, rtol=1e-4, atol=1e-6 * scale)


# --- SEQL: the formula --------------------------------------------------------------------


def np_seql(z, y, beta, tail, w) -> float:
    """Tan et al.'s softmax equalization loss in float64 numpy:
    p̃_j = e^{z_j} / Σ_k w̃_k e^{z_k}, w̃_k = 1 - β T_λ(f_k) (1 - y_k); mean -log p̃_y
    (weighted like F.cross_entropy when w is given)."""
    n, c = z.shape
    onehot = np.eye(c)[y]
    wt = 1.0 - beta * tail[None, :] * (1.0 - onehot)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p_y = e[np.arange(n), y] / (wt * e).sum(1)
    wy = np.ones(n) if w is None else w[y]
    return float((wy * -np.log(p_y)).sum() / wy.sum())


@pytest.mark.parametrize("weighted", [False, True])
def test_seql_matches_numpy(weighted: bool) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 5)) * 2
    y = rng.integers(0, 5, 16)
    beta = (rng.random((16, 5)) < 0.7).astype(np.float64)
    n = np.asarray(COUNTS, dtype=np.float64)
    lam = 0.05
    tail = (n / n.sum() < lam).astype(np.float64)
    assert tail.tolist() == [0, 0, 0, 1, 1]  # 9 / 671 and 2 / 671
    w = rng.random(5) + 0.2 if weighted else None
    drop = torch.tensor(beta * tail[None, :] * (1 - np.eye(5)[y]) > 0)
    assert torch.equal(tail_classes(torch.tensor(COUNTS), lam), torch.tensor(tail > 0))
    got = equalized_cross_entropy(
        torch.tensor(z), torch.tensor(y), drop, None if w is None else torch.tensor(w)
    )
    assert float(got) == pytest.approx(np_seql(z, y, beta, tail, w), rel=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_seql_loss_at_certain_draws(gamma: float) -> None:
    """γ = 0: β ≡ 0, plain CE; γ = 1: β ≡ 1, every non-target tail class leaves the sum."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20, 5)) * 2
    y = rng.integers(0, 5, 20)
    loss = build_loss(loss_section(name="seql", gamma=gamma, threshold=0.05), COUNTS)
    n = np.asarray(COUNTS, dtype=np.float64)
    tail = (n / n.sum() < 0.05).astype(np.float64)
    beta = np.full((20, 5), gamma)
    got = float(loss(torch.tensor(z), torch.tensor(y)))
    assert got == pytest.approx(np_seql(z, y, beta, tail, None), rel=1e-12)


def test_seql_gradient_by_finite_differences_and_closed_form() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 3, 4, 1, 2, 4])
    tail = torch.tensor([False, False, True, True, True])
    drop = draw_drops(y, tail, 0.6, 11, torch.device("cpu"))
    assert drop.any() and not drop[torch.arange(6), y].any()
    w = torch.rand(5, dtype=torch.float64, generator=g) + 0.3
    for weight in (None, w):
        assert torch.autograd.gradcheck(
            lambda t, weight=weight: equalized_cross_entropy(t, y, drop, weight), (z,)
        )
    # Closed form: ∂/∂z_j of -log p̃_y is p̃_j - y_j for kept j and 0 for dropped j.
    (grad,) = torch.autograd.grad(equalized_cross_entropy(z, y, drop, None), z)
    zd = z.detach().numpy()
    keep = ~drop.numpy()
    e = np.exp(zd - zd.max(1, keepdims=True)) * keep
    p = e / e.sum(1, keepdims=True)
    expected = (p - np.eye(5)[y.numpy()]) / 6
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_seql_draws_are_bernoulli_gamma_on_tail_non_targets_only() -> None:
    y = torch.arange(2000) % 5
    tail = torch.tensor([False, False, True, True, True])
    drop = draw_drops(y, tail, 0.3, position_seed(0, 1, 2), torch.device("cpu"))
    assert not drop[:, :2].any()
    assert not drop[torch.arange(2000), y].any()
    candidates = tail[None, :] & (y[:, None] != torch.arange(5)[None, :])
    rate = drop[candidates].double().mean().item()
    m = int(candidates.sum())  # 2000 * 3 * 4 / 5 = 4800 Bernoulli(0.3) draws: sd 0.0066
    assert m == 4800 and abs(rate - 0.3) < 5 * math.sqrt(0.3 * 0.7 / m)


def test_seql_draws_depend_on_seed_and_position_only() -> None:
    cfg = loss_section(name="seql", gamma=0.5, threshold=0.5)
    z, y = torch.randn(32, 5), torch.randint(0, 5, (32,))
    a, b = build_loss(cfg, COUNTS, seed=7), build_loss(cfg, COUNTS, seed=7)
    assert isinstance(a, SoftmaxEqualizationLoss)
    torch.manual_seed(123)  # the process's random state plays no part
    a.set_position(3, 4)
    first, second = float(a(z, y)), float(a(z, y))  # two micro-batches of one step
    torch.manual_seed(999)
    b.set_position(3, 4)
    assert (float(b(z, y)), float(b(z, y))) == (first, second)
    assert first != second  # micro-batches draw afresh
    b.set_position(3, 5)
    other = build_loss(cfg, COUNTS, seed=8)
    other.set_position(3, 4)
    assert float(b(z, y)) != first and float(other(z, y)) != first


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ib", "seql"])
def test_soft_targets_are_refused(name: str) -> None:
    own = {"start_epoch": 0} if name == "ib" else {}  # IB in its influence-balanced phase
    loss = build_loss(loss_section(name=name, **own), COUNTS)
    soft = torch.full((4, 5), 0.2)
    with pytest.raises(UserError, match="one class per sample"):
        loss(torch.randn(4, 5), soft)


def test_config_refuses_ib_weights_twice_and_a_switch_after_the_end(
    lwr, small: Path, tmp_path: Path
) -> None:
    preset = "cifar100-lt-ir100-ib"
    r = lwr(*train_args(preset, small, tmp_path / "a", "dataset=any", "loss.reweight=cb"))
    assert r.code == 2 and "loss.class_weight=none" in r.err and "Traceback" not in r.err
    r = lwr(*train_args(preset, small, tmp_path / "b", "dataset=any", "epochs=50"))
    assert r.code == 2 and "loss.start_epoch=100" in r.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert load_config(
        "cifar100-lt-ir100-ib", overrides=["loss.class_weight=none", "loss.reweight=drw"]
    )
    with pytest.raises(UserError, match="class ids 2"):  # inverse weights need every class
        build_loss(loss_section(name="ib"), [10, 3, 0, 4])
    assert build_loss(loss_section(name="ib", class_weight="none"), [10, 3, 0, 4])


# --- end to end ---------------------------------------------------------------------------


TINY = ["model.width=8", "batch_size=16", "log_every=1", "device=cpu", "epochs=2"]


@pytest.mark.parametrize(
    "loss", [["loss.name=ib", "loss.start_epoch=1"], ["loss.name=seql", "loss.threshold=0.2"]]
)
def test_cli_trains_with_each_loss(lwr, small: Path, tmp_path: Path, loss: list[str]) -> None:
    run = tmp_path / "run"
    r = lwr(*train_args("synthetic-lt-bs", small, run, *TINY, *loss))
    assert r.code == 0, r.err
    records = [x for x in read_metrics(run / "metrics.jsonl") if x["epoch"] > 0]
    assert len(records) == 2 and all(math.isfinite(x["loss"]) for x in records)
    assert "test_top1" in records[-1]


def _draw_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], int, torch.Tensor]]:
    """Every SEQL draw of the process: (epoch, step), call within the step, the drops."""
    import lwrcli.methods.seql as seql_module

    log: list[tuple[tuple[int, int], int, torch.Tensor]] = []
    original = seql_module.draw_drops

    def recording(self: SoftmaxEqualizationLoss, z, target, weight):
        position, call = self.position, self.calls
        drop = original(target, self.tail, self.gamma, self.draw_seed(), z.device)
        log.append((position, call, drop))
        return equalized_cross_entropy(z, target, drop, weight)

    monkeypatch.setattr(SoftmaxEqualizationLoss, "loss", recording)
    return log


@pytest.mark.slow
def test_seql_draws_the_same_beta_after_a_mid_epoch_resume(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uninterrupted run and one stopped inside epoch 2 then resumed draw the same β at
    every step and end with the same weights, bit for bit (CPU)."""
    from resume_scenario import stop_at_step
    from safetensors.torch import load_file

    from lwrcli.train.engine import Interrupted, Trainer
    from lwrcli.train.run import train_run

    overrides = [*TINY, "epochs=2", "checkpoint_every_steps=2", "eval_every=1"]
    cfg = load_config(
        "synthetic-lt-bs", overrides=[*overrides, "loss.name=seql", "loss.threshold=0.2"]
    )
    full_log = _draw_log(monkeypatch)
    train_run(cfg, small, tmp_path / "full")
    steps = len(full_log) // 2
    assert steps >= 4 and full_log[steps][0] == (1, 0)

    original = Trainer.train_step
    stop_at_step(monkeypatch, steps + 3)  # the third step of epoch 2: Ctrl-C saves after it
    cut_log = _draw_log(monkeypatch)
    with pytest.raises(Interrupted):
        train_run(cfg, small, tmp_path / "cut")
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed_log = _draw_log(monkeypatch)
    train_run(None, None, resume=tmp_path / "cut")  # type: ignore[arg-type]
    assert cut_log[-1][0] == (1, 2) and resumed_log[0][0] == (1, 3)  # saved where it stopped
    by_position = {(pos, call): drop for pos, call, drop in full_log}
    for pos, call, drop in cut_log + resumed_log:
        assert torch.equal(by_position[(pos, call)], drop), pos
    assert sum(bool(d.any()) for _, _, d in resumed_log) > 0  # the test draws something
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_switches_ib_on_at_its_epoch(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lwrcli.train.run import train_run

    seen: list[tuple[int, bool, bool]] = []
    original = InfluenceBalancedLoss.loss

    def spy(self: InfluenceBalancedLoss, z, target, weight):
        has_features = self.features is not None and self.features.features is not None
        seen.append((self.epoch, self.active, has_features))
        return original(self, z, target, weight)

    monkeypatch.setattr(InfluenceBalancedLoss, "loss", spy)
    cfg = load_config("synthetic-lt-bs", overrides=[*TINY, "loss.name=ib", "loss.start_epoch=1"])
    train_run(cfg, small, tmp_path / "run")
    epochs = sorted({e for e, _, _ in seen})
    assert epochs == [0, 1]
    assert all(active == (e >= 1) and feats for e, active, feats in seen)


def test_report_groups_ignore_ib_and_seql_settings_of_other_losses() -> None:
    """`lwr report` groups runs by the settings that act: IB's and SEQL's only with them.
    An old run folder's config.yaml holds every loss's settings; the report reads it through
    the migration, which keeps only the run's own loss's settings (under their new names)."""
    from lwrcli.studies.report import acting

    loss = {"reweight": "none", "ib_alpha": 1000.0, "ib_start_epoch": 100, "seql_gamma": 0.9}
    bs = acting(migrate({"loss": {**loss, "name": "bs"}}))
    assert set(bs) == {"loss.name", "loss.reweight"}
    ib = acting(migrate({"loss": {**loss, "name": "ib"}}))
    assert ib["loss.alpha"] == 1000.0 and ib["loss.start_epoch"] == 100 and "loss.gamma" not in ib
    seql = acting(migrate({"loss": {**loss, "name": "seql"}}))
    assert seql["loss.gamma"] == 0.9 and "loss.alpha" not in seql
    # The current format: a loss section holds its own settings only, and they all act.
    now = {"loss": loss_section(name="ib", alpha=10.0).model_dump()}
    assert acting(now)["loss.alpha"] == 10.0 and "loss.gamma" not in acting(now)


@pytest.mark.parametrize("name", ["ib", "seql"])
def test_label_smoothing_with_ib_or_seql_is_refused_at_config_time(name: str) -> None:
    with pytest.raises(UserError, match=f"loss.name={name} cannot take"):
        load_config(
            "cifar100-lt-ir100-ib",
            overrides=[f"loss.name={name}", "label_smoothing.epsilon=0.1"],
        )
