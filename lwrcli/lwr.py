"""The Logit Weight Repulsion regularizer (LWR.md) and its weight schedule λ(t).

R(W) = 1/(C(C-1)) Σ_{i≠j} max(0, s_ij − θ)^p, with s_ij the cosine of rows i, j of W after
optionally removing the shared direction u = normalize(mean_c w_c) (a constant: no gradient).

The hinge sum runs in row blocks inside a custom autograd Function: forward and backward each
rebuild one (block × C) slab of similarities at a time and autograd saves only the (C × d)
normalised rows, so memory is O(block × C) rather than a C × C matrix kept alive.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lwrcli.config import LWRConfig


def shared_direction(weight: torch.Tensor) -> torch.Tensor:
    """u = normalize(mean_c w_c), detached: the direction every class shares, (d,)."""
    return F.normalize(weight.detach().mean(0), dim=0, eps=1e-12)


def _project(weight: torch.Tensor, proj: bool, u: torch.Tensor | None = None) -> torch.Tensor:
    """v_c = w_c − (w_c·u)u, with u held constant (no gradient through it)."""
    if not proj:
        return weight
    u = shared_direction(weight) if u is None else u.detach().to(weight.dtype)
    return weight - (weight @ u)[:, None] * u[None, :]


def _normalize(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows divided by max(|v_c|, eps), differentiably."""
    return v / v.norm(dim=1, keepdim=True).clamp_min(eps)


class _HingeSum(torch.autograd.Function):
    """Σ_{i≠j} max(0, v̂_i·v̂_j − θ)^p over unit rows V̂ (C, d), computed in row blocks."""

    @staticmethod
    def forward(ctx, vhat: torch.Tensor, theta: float, power: int, block: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(vhat)
        ctx.theta, ctx.power, ctx.block = theta, power, block
        c = vhat.shape[0]
        total = vhat.new_zeros((), dtype=torch.float64)
        for start in range(0, c, block):
            # (b, C); clamped to [-1, 1] so rounding never lets θ = 1 pairs through.
            sim = (vhat[start : start + block] @ vhat.t()).clamp_(-1.0, 1.0)
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = theta  # the diagonal (i = j) contributes nothing
            excess = (sim - theta).clamp_min(0)
            total += (excess if power == 1 else excess * excess).sum(dtype=torch.float64)
        return total.to(vhat.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (vhat,) = ctx.saved_tensors
        theta, power, block = ctx.theta, ctx.power, ctx.block
        c = vhat.shape[0]
        grad = torch.empty_like(vhat)
        for start in range(0, c, block):
            sim = (vhat[start : start + block] @ vhat.t()).clamp_(-1.0, 1.0)
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = theta
            excess = (sim - theta).clamp_min(0)
            # G_ij = d/ds max(0, s − θ)^p; S is symmetric, so dΣ/dV̂ = (G + Gᵀ) V̂ = 2 G V̂.
            g = (excess > 0).to(vhat.dtype) if power == 1 else 2.0 * excess
            grad[start : start + block] = 2.0 * (g @ vhat)
        return grad * grad_out, None, None, None


def lwr_penalty(
    weight: torch.Tensor,
    theta: float,
    power: int = 1,
    proj: bool = True,
    block_size: int = 1024,
    eps: float = 1e-12,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """R(W) for classifier weights (C, d), a float32 (or float64) scalar.

    `direction` fixes u (d,) instead of deriving it from W; the gradient is the same, since u
    is a constant either way (it lets gradcheck see the function the gradient belongs to).
    θ = 1 gives exactly 0 and an exactly zero gradient (cosines never exceed 1), so a run with
    LWR at θ = 1 is the baseline bit for bit.
    """
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power}")
    c = weight.shape[0]
    w = weight if weight.dtype == torch.float64 else weight.float()
    if c < 2:
        return w.sum() * 0.0
    # Always full precision, even when called inside an autocast region.
    with torch.autocast(device_type=w.device.type, enabled=False):
        vhat = _normalize(_project(w, proj, direction), eps)
        hinge = _HingeSum.apply(vhat, float(theta), int(power), int(block_size))
    return hinge / (c * (c - 1))


def lwr_penalty_dense(
    weight: torch.Tensor,
    theta: float,
    power: int = 1,
    proj: bool = True,
    eps: float = 1e-12,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same R(W) with plain autograd over the full C × C matrix: the readable reference."""
    c = weight.shape[0]
    w = weight if weight.dtype == torch.float64 else weight.float()
    if c < 2:
        return w.sum() * 0.0
    vhat = _normalize(_project(w, proj, direction), eps)
    sim = (vhat @ vhat.t()).clamp(-1.0, 1.0)
    off = ~torch.eye(c, dtype=torch.bool, device=w.device)
    excess = (sim[off] - theta).clamp_min(0)
    return (excess**power).sum() / (c * (c - 1))


def schedule_factor(t: float, kind: str, start: float, end: float) -> float:
    """s(t) in [0, 1] at progress t (epochs): constant, linear, cosine or step (LWR.md)."""
    if kind == "constant":
        return 1.0
    if kind == "step" or end <= start:
        return 1.0 if t >= start else 0.0
    x = min(max((t - start) / (end - start), 0.0), 1.0)
    if kind == "linear":
        return x
    if kind == "cosine":
        return (1.0 - math.cos(math.pi * x)) / 2.0
    raise ValueError(f"unknown LWR schedule kind {kind!r}")


def lwr_lambda(cfg: LWRConfig, t: float, total_epochs: int) -> float:
    """λ(t) = lambda_max · s(t); `end` defaults to the last epoch; 0 when LWR is off."""
    if not cfg.enabled:
        return 0.0
    sched = cfg.schedule
    end = float(total_epochs) if sched.end is None else sched.end
    return cfg.lambda_max * schedule_factor(t, sched.kind, sched.start, end)
