"""LWR against LWR.md: closed forms, float64 numpy, finite differences, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lwrcli.config import LWRConfig
from lwrcli.lwr import (
    lwr_lambda,
    lwr_penalty,
    lwr_penalty_dense,
    schedule_factor,
    shared_direction,
)


def numpy_r(w: np.ndarray, theta: float, power: int, proj: bool) -> float:
    """R(W) written plainly with loops over pairs, in float64."""
    v = w.astype(np.float64).copy()
    if proj:
        u = v.mean(0)
        u = u / np.linalg.norm(u)
        v = v - np.outer(v @ u, u)
    c = len(v)
    total = 0.0
    for i in range(c):
        for j in range(c):
            if i != j:
                s = (
                    v[i]
                    @ v[j]
                    / (max(np.linalg.norm(v[i]), 1e-12) * max(np.linalg.norm(v[j]), 1e-12))
                )
                total += max(0.0, s - theta) ** power
    return total / (c * (c - 1))


def away_from_kink(c: int, d: int, theta: float, proj: bool, seed: int) -> torch.Tensor:
    """Random W whose pairwise cosines all sit at least 1e-3 away from θ (hinge is smooth)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        w = torch.randn(c, d, dtype=torch.float64, generator=g)
        w[1] = w[0] + 0.3 * w[1]  # at least one strongly similar pair, so the hinge is active
        v = w - (w @ shared_direction(w))[:, None] * shared_direction(w) if proj else w
        v = v / v.norm(dim=1, keepdim=True)
        s = v @ v.t()
        off = ~torch.eye(c, dtype=torch.bool)
        if ((s[off] - theta).abs() > 1e-3).all() and (s[off] > theta).any():
            return w


@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("power", [1, 2])
def test_value_matches_numpy_float64(proj: bool, power: int) -> None:
    w = torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = numpy_r(w.numpy(), 0.1, power, proj)
    assert float(lwr_penalty(w, 0.1, power, proj, block_size=4)) == pytest.approx(
        expected, rel=1e-12
    )


@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("block", [3, 64])
def test_gradcheck_float64(proj: bool, power: int, block: int) -> None:
    w = away_from_kink(7, 4, 0.2, proj, seed=power + 10 * proj).requires_grad_(True)
    u = shared_direction(w)  # u is a constant by definition: hold it fixed for gradcheck
    assert torch.autograd.gradcheck(
        lambda x: lwr_penalty(x, 0.2, power, proj, block_size=block, direction=u), (w,)
    )


@pytest.mark.parametrize("block", [1, 5, 16, 1000])
@pytest.mark.parametrize("proj", [True, False])
def test_blockwise_equals_dense(block: int, proj: bool) -> None:
    w = torch.randn(37, 12, dtype=torch.float64, requires_grad=True)
    a = lwr_penalty(w, 0.0, 2, proj, block_size=block)
    b = lwr_penalty_dense(w, 0.0, 2, proj)
    (ga,) = torch.autograd.grad(a, w)
    (gb,) = torch.autograd.grad(b, w)
    assert torch.allclose(a, b, rtol=1e-12) and torch.allclose(ga, gb, atol=1e-14)


def test_theta_one_gives_exact_zero_and_zero_gradient() -> None:
    w = torch.randn(30, 8, requires_grad=True)
    with torch.no_grad():
        w[1] = w[0] * 3.0  # identical direction: cosine 1 up to rounding
    r = lwr_penalty(w, 1.0, 1, True)
    (g,) = torch.autograd.grad(r, w)
    assert r.item() == 0.0
    assert torch.equal(g, torch.zeros_like(g))


def test_row_scale_invariance() -> None:
    w = torch.randn(15, 6, dtype=torch.float64)
    a = torch.rand(15, 1, dtype=torch.float64) * 10 + 0.1
    for proj in (False,):  # scaling rows changes the mean direction, so proj is not invariant
        assert float(lwr_penalty(a * w, 0.0, 1, proj)) == pytest.approx(
            float(lwr_penalty(w, 0.0, 1, proj)), rel=1e-12
        )


def test_gradient_is_orthogonal_to_each_row_without_proj() -> None:
    w = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(lwr_penalty(w, -0.5, 2, False), w)
    assert g.abs().max() > 0
    assert torch.allclose((g * w).sum(1), torch.zeros(12, dtype=torch.float64), atol=1e-15)


def test_orthogonal_rows_give_zero() -> None:
    w = torch.eye(6, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64)[:, None]
    for theta in (0.0, 0.3, 1.0):
        assert float(lwr_penalty(w, theta, 1, False)) == 0.0


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("theta", [-1.0, 0.0, 0.4, 0.9])
def test_identical_rows_give_one_minus_theta_to_the_p(power: int, theta: float) -> None:
    # Without projection. (With proj, identical rows equal the shared direction and project
    # to zero vectors, whose cosines are 0 by the eps convention.)
    w = torch.randn(1, 5, dtype=torch.float64).repeat(8, 1) * torch.rand(8, 1).double().add(0.5)
    assert float(lwr_penalty(w, theta, power, False)) == pytest.approx((1 - theta) ** power)
    projected = float(lwr_penalty(w, theta, power, True))
    assert projected == pytest.approx(max(0.0, -theta) ** power, abs=1e-6)


def test_projection_removes_the_shared_direction() -> None:
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(1, 16, dtype=torch.float64, generator=g) * 5
    w = shared + 0.5 * torch.randn(20, 16, dtype=torch.float64, generator=g)
    assert float(lwr_penalty(w, 0.4, 1, False)) > 0.3  # everything looks alike
    assert float(lwr_penalty(w, 0.4, 1, True)) < 0.05  # what tells classes apart is not


def test_bf16_input_gives_float32_result() -> None:
    w = torch.randn(10, 4).bfloat16().requires_grad_(True)
    r = lwr_penalty(w, 0.0)
    r.backward()
    assert r.dtype == torch.float32 and w.grad is not None and w.grad.dtype == torch.bfloat16


def test_no_c_by_c_tensor_is_saved_for_backward() -> None:
    c, d = 2048, 16
    w = torch.randn(c, d, requires_grad=True)
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        r = lwr_penalty(w, 0.0, 1, True, block_size=128)
    r.backward()
    assert max(sizes) <= c * d  # the (C, d) rows, never (C, C) = 4M
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lwr_penalty_dense(w, 0.0, 1, True)
    assert max(sizes) >= c * c  # the dense reference does keep it: the check can fail


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine", "step"])
def test_schedules_at_their_boundaries(kind: str) -> None:
    start, end = 10.0, 30.0
    before = schedule_factor(5.0, kind, start, end)
    at_start = schedule_factor(start, kind, start, end)
    mid = schedule_factor(20.0, kind, start, end)
    at_end = schedule_factor(end, kind, start, end)
    after = schedule_factor(40.0, kind, start, end)
    expected = {
        "constant": (1, 1, 1, 1, 1),
        "linear": (0, 0, 0.5, 1, 1),
        "cosine": (0, 0, 0.5, 1, 1),
        "step": (0, 1, 1, 1, 1),
    }[kind]
    assert (before, at_start, mid, at_end, after) == pytest.approx(expected)
    if kind == "cosine":
        assert schedule_factor(15.0, kind, start, end) == pytest.approx((1 - np.cos(np.pi / 4)) / 2)


def test_lambda_uses_last_epoch_by_default_and_zero_when_off() -> None:
    cfg = LWRConfig(enabled=True, lambda_max=2.0)
    assert lwr_lambda(cfg, 50.0, 200) == pytest.approx(0.5)
    assert lwr_lambda(cfg, 200.0, 200) == pytest.approx(2.0)
    assert lwr_lambda(LWRConfig(enabled=False, lambda_max=2.0), 100.0, 200) == 0.0
