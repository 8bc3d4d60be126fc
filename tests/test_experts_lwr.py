"""LWR on every expert's classifier: R is the mean over heads of R(W_k) (value against LWR.md
written out in numpy, gradient against finite differences), `lambda_max: auto` accounts for
the K heads and for a loss averaged over them, the epoch geometry keeps the first head's keys
and adds the means over heads, and a training step pushes every head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lwrcli.config import load_config
from lwrcli.train.geometry import expert_cosine, heads_geometry, heads_gradient_share
from lwrcli.train.lwr import LWR, lwr_penalty, lwr_penalty_heads, reference_rows_heads
from lwrcli.train.resolve import resolve_config

F64 = torch.float64
EXPERTS = ["model.name=resnet32", "model.variant.name=experts", "model.head.name=cosine"]
EXPERTS += ["model.head.scale=30", "dataset=any"]


def np_r(w: np.ndarray, theta: float, proj: bool = True) -> float:
    """R(W) from LWR.md with an explicit loop over ordered pairs (power 1)."""
    if proj:
        u = w.mean(0) / np.linalg.norm(w.mean(0))
        w = w - np.outer(w @ u, u)
    v = w / np.linalg.norm(w, axis=1, keepdims=True)
    s = v @ v.T
    c = len(w)
    return sum(max(0.0, s[i, j] - theta) for i in range(c) for j in range(c) if i != j) / (
        c * (c - 1)
    )


def heads(k: int = 3, c: int = 7, d: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        w = rng.standard_normal((c, d))
        w[1] = w[0] + 0.3 * w[1]  # an active pair in every head
        out.append(w)
    return out


@pytest.mark.parametrize("proj", [True, False])
def test_value_is_the_mean_over_heads(proj: bool) -> None:
    ws = heads()
    want = float(np.mean([np_r(w, 0.2, proj) for w in ws]))
    got = lwr_penalty_heads([torch.from_numpy(w) for w in ws], 0.2, 1, proj, block_size=3)
    assert float(got) == pytest.approx(want, rel=1e-12)
    # one head: exactly the single-head R
    one = torch.from_numpy(ws[0])
    assert torch.equal(lwr_penalty_heads([one], 0.2), lwr_penalty(one, 0.2))


def _finite_differences(fn, ws: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    grads = []
    for k, w in enumerate(ws):
        g = torch.zeros_like(w)
        for idx in np.ndindex(*w.shape):
            up = [x.clone() for x in ws]
            down = [x.clone() for x in ws]
            up[k][idx] += eps
            down[k][idx] -= eps
            g[idx] = (fn(up) - fn(down)) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("proj", [True, False])
def test_gradient_against_finite_differences(proj: bool) -> None:
    """Each head's gradient is (1/K) ∇R(W_k). The shared direction u_k is a constant for
    autograd by definition (LWR.md), so the differences perturb W_k with u_k held fixed."""
    ws = [torch.from_numpy(w) for w in heads(seed=3)]
    xs = [w.clone().requires_grad_(True) for w in ws]
    r = lwr_penalty_heads(xs, 0.2, 1, proj, block_size=4)
    analytic = torch.autograd.grad(r, xs)
    dirs = [w.mean(0) / w.mean(0).norm() for w in ws]

    def fn(ys: list[torch.Tensor]) -> float:
        terms = [
            lwr_penalty(y, 0.2, 1, proj, direction=u if proj else None) for y, u in zip(ys, dirs)
        ]
        return float(sum(terms) / len(terms))

    numeric = _finite_differences(fn, ws)
    for a, n in zip(analytic, numeric):
        assert torch.allclose(a, n, atol=1e-7, rtol=1e-5)
    if not proj:  # without the projection the function is exactly what autograd sees
        assert torch.autograd.gradcheck(
            lambda *w: lwr_penalty_heads(list(w), 0.2, 1, False), tuple(xs), eps=1e-6, atol=1e-8
        )


def test_theta_init_keeps_one_reference_per_head() -> None:
    ws = [torch.from_numpy(w) for w in heads(seed=5)]
    ref = reference_rows_heads(ws)
    assert ref.shape == (3, 7, 5)
    reg = LWR(load_config("synthetic-lt-bs-lwr", overrides=["lwr.theta=init"]).lwr, 10, ref)
    out = reg(ws, 10.0)
    assert out is not None and float(out[1]) < 1e-15  # at its own reference: nothing repels
    moved = [ws[0] + 0.0, ws[1] + 0.0, ws[2] + 0.0]
    moved[2][3] = moved[2][4]  # head 3: two classes made identical
    out = reg(moved, 10.0)
    assert out is not None and float(out[1]) > 0


def test_lambda_auto_accounts_for_the_heads_and_the_loss() -> None:
    """λ(C) for one head; K λ(C) where R averages K heads and the experts' losses are summed
    (RIDE, SADE): each head then gets a single head's push; λ(C) again where the loss averages
    them too (BalPoE: the 1/K of its loss cancels the K)."""
    dev = torch.device("cpu")

    def lam(*sets: str) -> float:
        cfg = load_config("synthetic-lt-bs-lwr", overrides=["lwr.lambda_max=auto", *sets])
        return resolve_config(cfg, dev, num_classes=100).cfg.lwr.lambda_max

    single = lam()
    assert single == 10.0
    assert lam(*EXPERTS, "loss.name=sade") == 30.0
    assert lam(*EXPERTS, "loss.name=ride") == 30.0
    assert lam(*EXPERTS, "model.variant.num_experts=4", "loss.name=ride") == 40.0
    assert lam(*EXPERTS, "loss.name=balpoe") == 10.0
    bal4 = ["model.variant.num_experts=4", "loss.name=balpoe", "loss.taus=[0,0.5,1.5,2]"]
    assert lam(*EXPERTS, *bal4) == 10.0


def test_geometry_keeps_the_first_heads_keys_and_adds_means() -> None:
    ws = [torch.from_numpy(w).float() for w in heads(seed=7)]
    counts = [100, 50, 25, 12, 6, 3, 1]
    one = heads_geometry(ws[:1], counts, 0.2)
    multi = heads_geometry(ws, counts, 0.2)
    assert set(one) < set(multi)
    assert all(multi[k] == v for k, v in one.items())  # today's keys: the first head's
    assert multi["geom_heads"] == 3
    per = [heads_geometry([w], counts, 0.2)["geom_r"] for w in ws]
    assert multi["geom_r_heads_mean"] == pytest.approx(np.mean(per), rel=1e-12)
    assert multi["geom_r_heads_mean"] == pytest.approx(float(lwr_penalty_heads(ws, 0.2)), rel=1e-5)
    # same-class cosine between experts: 1 for copies, the mean of hand cosines otherwise
    assert expert_cosine([ws[0], ws[0].clone()]) == pytest.approx(1.0)
    a, b = ws[0].double(), ws[1].double()
    hand = np.mean([float(a[c] @ b[c] / (a[c].norm() * b[c].norm())) for c in range(7)])
    assert expert_cosine(ws[:2]) == pytest.approx(hand, rel=1e-9)


def test_gradient_share_over_all_heads() -> None:
    ws = [torch.from_numpy(w).clone().requires_grad_(True) for w in heads(seed=9)]
    task = [torch.full_like(w, 0.5) for w in ws]
    lwr = [torch.full_like(w, 0.1) for w in ws]
    for w, t, g in zip(ws, task, lwr):
        w.grad = t + g  # what backward leaves: task + LWR
    share = heads_gradient_share(ws, lwr, 0.2)
    assert float(share["lwr_share"]) == pytest.approx(0.2, rel=1e-6)


def test_a_training_step_repels_every_head(small16) -> None:  # noqa: ANN001
    """λ R with R the mean over heads: each head's LWR gradient is (λ/K) ∇R(W_k)."""
    from lwrcli.data.loading import build_data
    from lwrcli.train.build import build_components
    from lwrcli.train.engine import Trainer

    cfg = load_config(
        "synthetic-lt-bs-lwr",
        overrides=[*EXPERTS, "loss.name=sade", "model.resnet_width=4", "batch_size=8"]
        + ["device=cpu", "lwr.theta=0.0", "lwr.lambda_max=6", "lwr.schedule.kind=constant"],
    )
    dev = torch.device("cpu")
    data = build_data(small16, cfg, dev)
    cfg = resolve_config(cfg, dev, num_classes=5).cfg
    trainer = Trainer(cfg, build_components(cfg, data, dev), dev, run_dir=None)
    assert len(trainer.classifiers) == 3
    weights = [c.weight.detach().clone().requires_grad_(True) for c in trainer.classifiers]
    lam_r = trainer.regularizer(weights, 1.0)
    assert lam_r is not None
    grads = torch.autograd.grad(lam_r[0], weights)
    for w, g in zip(weights, grads):
        x = w.detach().clone().requires_grad_(True)
        (single,) = torch.autograd.grad(lwr_penalty(x, 0.0), x)
        assert torch.allclose(g, 6.0 / 3 * single, rtol=1e-5, atol=1e-9)
    x, y = next(iter(data.train))
    terms = trainer.train_step(x, y, 1.0, None)
    assert "lwr" in terms and float(terms["lwr"]) > 0
