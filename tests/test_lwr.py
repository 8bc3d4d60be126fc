"""LWR against LWR.md: float64 numpy closed forms, finite differences, identities, memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lwrcli.config import LWRConfig, LWRScheduleConfig, validate_config
from lwrcli.errors import UserError
from lwrcli.train.lwr import (
    build_regularizer,
    lwr_lambda,
    lwr_penalty,
    lwr_penalty_dense,
    schedule_factor,
    shared_direction,
)

F64 = torch.float64


def np_project(w: np.ndarray, proj: bool) -> np.ndarray:
    if not proj:
        return w.copy()
    u = w.mean(axis=0)
    u = u / np.linalg.norm(u)
    return w - np.outer(w @ u, u)


def np_cosines(w: np.ndarray, proj: bool) -> np.ndarray:
    v = np_project(w.astype(np.float64), proj)
    n = np.maximum(np.linalg.norm(v, axis=1), 1e-12)
    return (v @ v.T) / np.outer(n, n)


def np_r(w: np.ndarray, theta: float, power: int, proj: bool) -> float:
    """R(W) straight from LWR.md, with an explicit loop over ordered pairs i != j."""
    s = np_cosines(w, proj)
    c = len(w)
    total = sum(max(0.0, s[i, j] - theta) ** power for i in range(c) for j in range(c) if i != j)
    return total / (c * (c - 1))


def away_from_kink(c: int, d: int, theta: float, proj: bool, seed: int) -> np.ndarray:
    """Random W (float64) whose cosines all sit >= 1e-3 from θ, with some pairs active."""
    rng = np.random.default_rng(seed)
    while True:
        w = rng.standard_normal((c, d))
        w[1] = w[0] + 0.3 * w[1]  # one strongly similar pair, so the hinge is active
        s = np_cosines(w, proj)[~np.eye(c, dtype=bool)]
        if np.abs(s - theta).min() > 1e-3 and (s > theta).any():
            return w


def grad_of(fn, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = w.detach().clone().requires_grad_(True)
    r = fn(x)
    (g,) = torch.autograd.grad(r, x)
    return r.detach(), g


# --- value against an independent float64 computation -----------------------------------------


@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("theta", [-0.3, 0.1, 0.6])
def test_value_matches_numpy_float64(proj: bool, power: int, theta: float) -> None:
    w = np.random.default_rng(7).standard_normal((9, 5))
    w[3] = 2.0 * w[2] + 0.1 * w[3]  # a close pair, so high θ still has active terms
    expected = np_r(w, theta, power, proj)
    assert expected > 0
    got = lwr_penalty(torch.from_numpy(w), theta, power, proj, block_size=4)
    assert got.dtype == F64
    assert float(got) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    got32 = lwr_penalty(torch.from_numpy(w).float(), theta, power, proj, block_size=4)
    assert got32.dtype == torch.float32
    assert float(got32) == pytest.approx(expected, rel=1e-5, abs=1e-7)


# --- gradient: finite differences, dense reference, structure ---------------------------------


@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("block", [3, 7, 64])  # 3 < C and does not divide C = 7
def test_gradcheck_float64(proj: bool, power: int, block: int) -> None:
    theta = 0.2
    w = torch.from_numpy(away_from_kink(7, 4, theta, proj, seed=power + 10 * proj))
    w.requires_grad_(True)
    # u is a constant by definition: gradcheck must perturb W with u held fixed.
    u = torch.from_numpy(np_project(w.detach().numpy(), False).mean(0)).to(F64)
    assert torch.autograd.gradcheck(
        lambda x: lwr_penalty(x, theta, power, proj, block_size=block, direction=u),
        (w,),
        eps=1e-6,
        atol=1e-8,
    )


def test_shared_direction_is_a_constant_for_autograd() -> None:
    w = torch.randn(11, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    u_np = w.numpy().mean(0) / np.linalg.norm(w.numpy().mean(0))
    assert np.allclose(shared_direction(w).numpy(), u_np, atol=1e-15)
    _, g_default = grad_of(lambda x: lwr_penalty(x, 0.0, 2, True), w)
    _, g_fixed = grad_of(lambda x: lwr_penalty(x, 0.0, 2, True, direction=torch.tensor(u_np)), w)
    assert torch.allclose(g_default, g_fixed, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("block", [1, 5, 16, 37, 1000])
@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("power", [1, 2])
def test_blockwise_equals_dense(block: int, proj: bool, power: int) -> None:
    w = torch.randn(37, 12, dtype=F64, generator=torch.Generator().manual_seed(block))
    ra, ga = grad_of(lambda x: lwr_penalty(x, -0.1, power, proj, block_size=block), w)
    rb, gb = grad_of(lambda x: lwr_penalty_dense(x, -0.1, power, proj), w)
    assert torch.allclose(ra, rb, rtol=1e-12)
    assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-15)
    assert ga.abs().max() > 0


def test_gradient_is_orthogonal_to_each_row_without_proj() -> None:
    w = torch.randn(12, 6, dtype=F64, generator=torch.Generator().manual_seed(5))
    _, g = grad_of(lambda x: lwr_penalty(x, -0.5, 2, False, block_size=5), w)
    assert g.abs().max() > 1e-3
    dots = (g * w).sum(1) / (g.norm(dim=1) * w.norm(dim=1))
    assert dots.abs().max() < 1e-12  # repulsion turns rows, never grows or shrinks them


# --- θ = 1 and λ = 0: exactly the baseline ----------------------------------------------------


@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("power", [1, 2])
def test_theta_one_gives_exact_zero_and_zero_gradient(proj: bool, power: int) -> None:
    w = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    w[1] = w[0] * 3.0  # same direction: a cosine of 1 up to rounding, maybe 1 + 1 ulp
    w[2] = w[0]
    r, g = grad_of(lambda x: lwr_penalty(x, 1.0, power, proj, block_size=7), w)
    assert r.item() == 0.0
    assert torch.equal(g, torch.zeros_like(g))


def _train(theta: float | None, lam: float) -> list[torch.Tensor]:
    """Three SGD steps of a linear classifier on CE (+ λ R at θ when θ is given)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        if theta is not None:
            loss = loss + lam * lwr_penalty(model.weight, theta, 1, True, block_size=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_theta_one_or_zero_lambda_training_is_bit_identical_to_baseline() -> None:
    base = _train(None, 0.0)
    for theta, lam in ((1.0, 0.7), (0.0, 0.0)):
        assert all(torch.equal(a, b) for a, b in zip(base, _train(theta, lam), strict=True))
    changed = _train(-1.0, 0.7)  # the check can fail: an active term does move the weights
    assert not torch.equal(base[0], changed[0])


def test_regularizer_is_inert_when_it_cannot_contribute() -> None:
    w = torch.randn(6, 4, requires_grad=True)
    on = LWRConfig(enabled=True, theta=0.0, lambda_max=2.0)  # linear ramp over 10 epochs
    assert build_regularizer(LWRConfig(), 10) is None  # disabled
    assert build_regularizer(on, 10)(w, 0.0) is None  # λ(0) = 0
    assert build_regularizer(on.model_copy(update={"theta": 1.0}), 10)(w, 5.0) is None
    reg = build_regularizer(on, 10)
    assert reg is not None and reg.lam(2.5) == pytest.approx(0.5)
    out = reg(w, 2.5)
    assert out is not None
    term, r = out
    expected = np_r(w.detach().numpy(), 0.0, 1, True)
    assert term.requires_grad and not r.requires_grad
    assert float(term.detach()) == pytest.approx(0.5 * expected, rel=1e-5)
    assert float(r) == pytest.approx(expected, rel=1e-5)


# --- closed-form properties -------------------------------------------------------------------


def test_row_scale_invariance() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(15, 6, dtype=F64, generator=g)
    a = torch.rand(15, 1, dtype=F64, generator=g) * 10 + 0.1
    for power in (1, 2):
        assert float(lwr_penalty(a * w, 0.0, power, False)) == pytest.approx(
            float(lwr_penalty(w, 0.0, power, False)), rel=1e-12
        )
        # With proj, scaling rows moves the mean; for a fixed u the projection commutes with it.
        u = shared_direction(w)
        assert float(lwr_penalty(a * w, 0.0, power, True, direction=u)) == pytest.approx(
            float(lwr_penalty(w, 0.0, power, True, direction=u)), rel=1e-12
        )


@pytest.mark.parametrize("theta", [0.0, 0.3, 0.9, 1.0])
def test_orthogonal_rows_give_zero(theta: float) -> None:
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0], dtype=F64)
    w = torch.eye(6, 9, dtype=F64)[[3, 0, 5, 1, 4, 2]] * (signs * torch.arange(1, 7))[:, None]
    r, g = grad_of(lambda x: lwr_penalty(x, theta, 1, False, block_size=4), w)
    assert r.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
    # In a rotated frame rows are orthogonal only up to rounding: cosines of ~1e-16.
    q = torch.linalg.qr(torch.randn(9, 9, dtype=F64, generator=torch.Generator().manual_seed(0)))
    r = lwr_penalty(w @ q[0], theta, 1, False, block_size=4)
    assert r.item() < 1e-15 if theta == 0.0 else r.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("theta", [-1.0, -0.5, 0.0, 0.4, 0.9])
def test_identical_rows(dtype: torch.dtype, power: int, theta: float) -> None:
    """Without proj: R = (1-θ)^p. With proj, rows equal to the shared direction project to zero
    vectors (exactly, not to rounding noise), whose cosines are 0: R = max(0, -θ)^p."""
    g = torch.Generator().manual_seed(4)
    row = torch.randn(1, 5, dtype=dtype, generator=g)
    w = row.repeat(8, 1)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float(lwr_penalty(w, theta, power, False, block_size=3)) == pytest.approx(
        (1 - theta) ** power, rel=tol, abs=tol
    )
    r, grad = grad_of(lambda x: lwr_penalty(x, theta, power, True, block_size=3), w)
    assert float(r) == max(0.0, -theta) ** power
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("theta", [-1.0, 0.0, 0.4])
@pytest.mark.parametrize("power", [1, 2])
def test_projection_keeps_only_what_tells_classes_apart(theta: float, power: int) -> None:
    """W = a_c u + z_c with Σ z_c = 0 and z_c ⊥ u: proj gives exactly R of Z without proj."""
    rng = np.random.default_rng(9)
    u = np.zeros(6)
    u[0] = 1.0
    z = rng.standard_normal((10, 6))
    z[:, 0] = 0.0
    z -= z.mean(0)
    a = rng.uniform(2.0, 5.0, size=(10, 1))
    w = torch.from_numpy(a * u + z)
    assert float(lwr_penalty(w, theta, power, True, block_size=3)) == pytest.approx(
        np_r(z, theta, power, False), rel=1e-10
    )
    # Rows ±z: same-sign pairs have s = 1, opposite pairs s = -1: 4 of 12 ordered pairs active.
    pm = np.stack([z[0], z[0], -z[0], -z[0]])
    w = torch.from_numpy(np.array([[3.0], [4.0], [5.0], [6.0]]) * u + pm)
    expected = (4 * (1 - theta) ** power + 8 * max(0.0, -1 - theta) ** power) / 12
    assert float(lwr_penalty(w, theta, power, True)) == pytest.approx(expected, rel=1e-12)


def test_single_class_gives_zero() -> None:
    r, g = grad_of(lambda x: lwr_penalty(x, 0.0), torch.randn(1, 4))
    assert r.item() == 0.0 and torch.equal(g, torch.zeros(1, 4))


def test_half_precision_is_upcast() -> None:
    w = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    ref = np_r(w.bfloat16().double().numpy(), 0.0, 1, True)
    x = w.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = lwr_penalty(x, 0.0, block_size=3)
    r.backward()
    assert r.dtype == torch.float32 and float(r.detach()) == pytest.approx(ref, rel=1e-5)
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_no_c_by_c_tensor_is_saved_for_backward() -> None:
    c, d = 2048, 16
    w = torch.randn(c, d, requires_grad=True)
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        r = lwr_penalty(w, 0.0, 1, True, block_size=128)
    r.backward()
    assert (c, d) in shapes  # the hooks do see the block Function's saved rows
    assert max(math.prod(s) for s in shapes) < c * c
    shapes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lwr_penalty_dense(w, 0.0, 1, True)
    assert max(math.prod(s) for s in shapes) >= c * c  # the check can fail: dense keeps C x C


# --- the schedule λ(t) ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "step"])
def test_schedules_at_their_boundaries(kind: str) -> None:
    start, end = 10.0, 30.0
    points = (5.0, start, 15.0, 20.0, end, 40.0)  # before, start, quarter, mid, end, after
    expected = {
        "constant": (1, 1, 1, 1, 1, 1),
        "linear": (0, 0, 0.25, 0.5, 1, 1),
        "cosine": (0, 0, (1 - math.cos(math.pi / 4)) / 2, 0.5, 1, 1),
        "step": (0, 1, 1, 1, 1, 1),
    }[kind]
    got = tuple(schedule_factor(t, kind, start, end) for t in points)
    assert got == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ramp_with_end_not_after_start_is_a_step(kind: str) -> None:
    for end in (10.0, 5.0):
        assert schedule_factor(9.99, kind, 10.0, end) == 0.0
        assert schedule_factor(10.0, kind, 10.0, end) == 1.0


def test_unknown_schedule_kind_is_a_user_error() -> None:
    with pytest.raises(UserError, match="lwr.schedule.kind.*'cosine'"):
        validate_config({"lwr": {"schedule": {"kind": "cosin"}}})


def test_lambda_schedule() -> None:
    cfg = LWRConfig(enabled=True, lambda_max=2.0)  # linear from 0 to the end of training
    assert lwr_lambda(cfg, 0.0, 200) == 0.0
    assert lwr_lambda(cfg, 50.0, 200) == pytest.approx(0.5)
    assert lwr_lambda(cfg, 200.0, 200) == pytest.approx(2.0)
    ramp = LWRScheduleConfig(kind="linear", start=10.0, end=20.0)
    cfg = LWRConfig(enabled=True, lambda_max=4.0, schedule=ramp)
    assert [lwr_lambda(cfg, t, 200) for t in (5.0, 15.0, 25.0)] == pytest.approx([0.0, 2.0, 4.0])
    assert lwr_lambda(LWRConfig(enabled=False, lambda_max=2.0), 100.0, 200) == 0.0
