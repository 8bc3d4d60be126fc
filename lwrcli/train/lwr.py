"""The Logit Weight Repulsion regularizer R(W) and its weight schedule λ(t) (see LWR.md).

R pushes apart classifier rows that are more similar than a margin θ, after optionally removing
the direction all classes share. The C x C similarity matrix is built in row blocks inside a
custom autograd Function that saves only the normalised rows, so memory kept for autograd is
O(C d) and the working set is O(block_size x C), which matters at C = 8142 (iNaturalist).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lwrcli.config import LWRConfig
from lwrcli.runtime.device import no_autocast

# A margin: the fixed θ, or (`theta: init`) the reference unit rows V̂⁰ (C, d) of the head at
# initialisation, whose cosines s⁰_ij are each pair's own margin.
Margin = float | Tensor


def head_margin(theta: Margin, k: int) -> Margin:
    """Head k's margin: θ, or its reference rows where `theta: init` keeps one set per head of
    a multi-head model, stacked (K, C, d)."""
    if isinstance(theta, Tensor) and theta.dim() == 3:
        return theta[k]
    return theta


def margin_block(theta: Margin, r0: int, r1: int) -> float | Tensor:
    """θ, or the reference cosines s⁰ of rows r0:r1 against all rows, (r1-r0, C)."""
    if isinstance(theta, Tensor):
        return (theta[r0:r1] @ theta.t()).clamp_(-1.0, 1.0)
    return theta


def _block_hinge(v_hat: Tensor, r0: int, r1: int, theta: Margin) -> Tensor:
    """max(0, s_ij - θ_ij) for rows r0:r1 against all rows, diagonal zeroed. Shape (r1-r0, C).

    Cosines are clamped to [-1, 1]: rounding can push s_ii-like entries of duplicate rows just
    above 1, and θ = 1 must give exactly zero value and gradient. With reference rows as θ, the
    same blocks of the same products are compared, so at initialisation h is exactly 0.
    """
    s = (v_hat[r0:r1] @ v_hat.t()).clamp_(-1.0, 1.0)
    h = s.sub_(margin_block(theta, r0, r1)).clamp_min_(0.0)
    h.diagonal(offset=r0).zero_()  # entries (i, r0 + i): a row against itself
    return h


class _BlockHingeSum(torch.autograd.Function):
    """Σ_{i≠j} max(0, s_ij - θ)^p / (C (C-1)) for unit rows V̂ (C, d), computed in row blocks.

    Only V̂ is saved; backward rebuilds each block. Since S and hence G are symmetric,
    dR/dV̂ = (G + Gᵀ) V̂ / (C (C-1)) = 2 G V̂ / (C (C-1)), one block of rows of G at a time.
    """

    @staticmethod
    def forward(ctx: Any, v_hat: Tensor, theta: Margin, power: int, block_size: int) -> Tensor:
        c = v_hat.shape[0]
        # Block sums accumulate in float64: at C = 8142 there are 66M terms.
        total = torch.zeros((), dtype=torch.float64, device=v_hat.device)
        for r0 in range(0, c, block_size):
            h = _block_hinge(v_hat, r0, min(r0 + block_size, c), theta)
            total += (h if power == 1 else h.pow_(power)).sum(dtype=torch.float64)
        ctx.save_for_backward(v_hat)
        ctx.theta, ctx.power, ctx.block_size = theta, power, block_size
        return (total / (c * (c - 1))).to(v_hat.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        (v_hat,) = ctx.saved_tensors
        c = v_hat.shape[0]
        grad = torch.empty_like(v_hat)
        with no_autocast(v_hat.device):
            for r0 in range(0, c, ctx.block_size):
                r1 = min(r0 + ctx.block_size, c)
                h = _block_hinge(v_hat, r0, r1, ctx.theta)
                # Hinge derivative p * h^(p-1) where s > θ, 0 elsewhere and on the diagonal.
                g = (h > 0).to(h.dtype) if ctx.power == 1 else h.pow_(ctx.power - 1).mul_(ctx.power)
                grad[r0:r1] = g @ v_hat
        grad.mul_(grad_out * (2.0 / (c * (c - 1))))
        return grad, None, None, None


def _rows(weight: Tensor) -> Tensor:
    """Check shape (C, d) and upcast half precision to float32 (differentiably)."""
    if weight.dim() != 2:
        raise ValueError(
            f"LWR expects a classifier weight of shape (C, d), got {tuple(weight.shape)}"
        )
    return weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight


def shared_direction(weight: Tensor, eps: float = 1e-12) -> Tensor:
    """u = normalize(mean_c w_c), detached: the direction all classes share. Shape (d,)."""
    w = _rows(weight).detach()
    return F.normalize(w.mean(dim=0), dim=0, eps=eps)


def project_rows(weight: Tensor, direction: Tensor) -> Tensor:
    """v_c = w_c - (w_c · u) u for a constant direction u (d,), normalised here. Shape (C, d).

    A row parallel to u leaves only rounding noise, whose direction is arbitrary and would make
    R depend on the last bits (identical rows would score s = 1, not the exact-arithmetic 0).
    Rows whose remainder is within a few rounding units of |w_c| are therefore set to zero.
    """
    u = F.normalize(direction.detach().to(weight.dtype), dim=0, eps=1e-12)
    v = weight - (weight @ u).unsqueeze(1) * u
    d = weight.shape[1]
    tol = 8.0 * math.sqrt(d) * torch.finfo(weight.dtype).eps
    keep = v.detach().norm(dim=1, keepdim=True) > tol * weight.detach().norm(dim=1, keepdim=True)
    return torch.where(keep, v, torch.zeros_like(v))


def reference_rows(weight: Tensor, proj: bool = True, eps: float = 1e-12) -> Tensor:
    """The unit rows V̂ (C, d) as LWR sees W now (projected on its own shared direction when
    `proj`), detached: the margin of `theta: init`, kept from the head at initialisation."""
    w = _rows(weight).detach()
    if proj:
        w = project_rows(w, shared_direction(w, eps))
    return F.normalize(w, dim=1, eps=eps)


def reference_rows_heads(weights: Sequence[Tensor], proj: bool = True) -> Tensor:
    """`reference_rows` of one head (C, d), or of every head of a multi-head model (K, C, d)."""
    if len(weights) == 1:
        return reference_rows(weights[0], proj)
    return torch.stack([reference_rows(w, proj) for w in weights])


def resolve_margin(theta: float | str, reference: Tensor | None) -> Margin:
    """The margin a config's θ stands for: the number, or the reference rows for 'init'."""
    if theta == "init":
        if reference is None:
            raise ValueError("lwr.theta=init needs the head's reference rows at initialisation")
        return reference
    return float(theta)


def lwr_penalty(
    weight: Tensor,
    theta: Margin,
    power: int = 1,
    proj: bool = True,
    block_size: int = 1024,
    eps: float = 1e-12,
    direction: Tensor | None = None,
) -> Tensor:
    """R(W) as LWR.md defines it, for the classifier weight W (C, d) (bias excluded).

    Returns a float32 scalar (float64 for float64 input; bf16/fp16 are upcast). The C x C
    similarities are built `block_size` rows at a time and never saved for autograd.
    `direction` overrides the shared direction u (default `shared_direction(W)`); u is always a
    constant for autograd. θ = 1 gives exactly 0 and an exactly zero gradient. θ may be
    reference unit rows (C, d) (`reference_rows`): pair (i, j)'s margin is then their cosine
    at initialisation, so only pairs that grew more similar than they started are repelled.
    """
    if power < 1:
        raise ValueError(f"LWR power must be a positive integer, got {power}")
    if block_size < 1:
        raise ValueError(f"LWR block_size must be >= 1, got {block_size}")
    w = _rows(weight)
    c = w.shape[0]
    with no_autocast(w.device):
        if c < 2:
            return w.sum() * 0.0  # no pairs; keeps a (zero) gradient path for callers
        if proj:
            u = shared_direction(w, eps) if direction is None else direction
            w = project_rows(w, u)
        v_hat = F.normalize(w, dim=1, eps=eps)
        margin = theta.to(v_hat) if isinstance(theta, Tensor) else float(theta)
        return _BlockHingeSum.apply(v_hat, margin, int(power), int(block_size))


def lwr_penalty_heads(
    weights: Sequence[Tensor],
    theta: Margin,
    power: int = 1,
    proj: bool = True,
    block_size: int = 1024,
) -> Tensor:
    """R over K classifier heads (a multi-expert model): the mean over heads of R(W_k), each
    W_k with its own shared direction and, for `theta: init`, its own reference rows
    (`head_margin`). A mean, not a sum, so R reads on the single-head scale; the λ rule makes
    up for it (`lwr.lambda_max: auto`, lwrcli.methods.experts). One head: R(W) itself."""
    if len(weights) == 1:
        return lwr_penalty(weights[0], head_margin(theta, 0), power, proj, block_size)
    terms = [
        lwr_penalty(w, head_margin(theta, k), power, proj, block_size)
        for k, w in enumerate(weights)
    ]
    return torch.stack(terms).mean()


def lwr_penalty_dense(
    weight: Tensor, theta: Margin, power: int = 1, proj: bool = True, eps: float = 1e-12
) -> Tensor:
    """The same R(W) with plain autograd over the full C x C matrix: the readable reference
    for tests and benchmarks (it keeps C x C alive for backward; use `lwr_penalty` to train)."""
    w = _rows(weight)
    c = w.shape[0]
    if c < 2:
        return w.sum() * 0.0
    if proj:
        w = project_rows(w, shared_direction(w, eps))
    v_hat = F.normalize(w, dim=1, eps=eps)
    if isinstance(theta, Tensor):
        theta = (theta.to(v_hat) @ theta.to(v_hat).t()).clamp(-1.0, 1.0)
    hinge = ((v_hat @ v_hat.t()).clamp(-1.0, 1.0) - theta).clamp_min(0.0).pow(power)
    off_diag = 1.0 - torch.eye(c, dtype=hinge.dtype, device=hinge.device)
    return (hinge * off_diag).sum() / (c * (c - 1))


# ---------------------------------------------------------------------------------------------
# The weight schedule λ(t)


def schedule_factor(t: float, kind: str, start: float, end: float) -> float:
    """s(t) in [0, 1] at training progress t (epochs, fractional).

    linear/cosine ramp from `start` to `end`; with end <= start they become a step at `start`.
    """
    if kind == "constant":
        return 1.0
    if kind == "step" or end <= start:
        return 1.0 if t >= start else 0.0
    x = min(max((t - start) / (end - start), 0.0), 1.0)
    if kind == "linear":
        return x
    return (1.0 - math.cos(math.pi * x)) / 2.0


# R averages over C (C - 1) pairs, so the same λ pushes less per class as C grows. LWR's share
# of the classifier gradient at the end of the ramp, measured on the synthetic source with
# λ_max = 10 (docs/lwr.md, "How strong is LWR?"): C -> share.
MEASURED_SHARE = {20: 0.060, 100: 0.018, 1000: 0.00143}


def share_at(classes: int) -> float:
    """The measured share at `classes`, log-log interpolated (extrapolated with the nearest
    segment's slope outside the measured range)."""
    points = sorted(MEASURED_SHARE.items())
    k = next((i for i in range(1, len(points) - 1) if classes < points[i][0]), len(points) - 1)
    (c0, s0), (c1, s1) = points[k - 1], points[k]
    slope = math.log(s1 / s0) / math.log(c1 / c0)
    return s0 * (classes / c0) ** slope


def lambda_for_classes(classes: int) -> float:
    """λ_max = 10 · share(100) / share(C), two significant digits: every dataset sees about
    the share CIFAR-100 sees at λ 10 (the rule of the presets and of `lambda_max: auto`)."""
    return float(f"{10.0 * share_at(100) / share_at(max(classes, 2)):.2g}")


def lwr_lambda(cfg: LWRConfig, t: float, total_epochs: int) -> float:
    """λ(t) = lambda_max * s(t); the schedule's end defaults to the end of training."""
    if not cfg.enabled:
        return 0.0
    if cfg.lambda_max == "auto":
        raise ValueError("lwr.lambda_max 'auto' must be resolved first (lwrcli.train.resolve)")
    sched = cfg.schedule
    end = float(total_epochs) if sched.end is None else sched.end
    return cfg.lambda_max * schedule_factor(t, sched.kind, sched.start, end)


class LWR:
    """The built regularizer of a run: its config, the run length and its margin (θ, or the
    head's reference rows at initialisation for `theta: init`), so the train step asks only
    `lwr(weight, t)`. Returns (λ(t) R(W), R(W)) as float32 scalars, or None when the term
    cannot contribute (λ(t) = 0 or θ >= 1): R is then not computed at all and the step is
    bit-identical to the baseline's."""

    def __init__(self, cfg: LWRConfig, total_epochs: int, reference: Tensor | None = None) -> None:
        self.cfg = cfg
        self.total_epochs = total_epochs
        self.margin = resolve_margin(cfg.theta, reference)

    def lam(self, t: float) -> float:
        """λ(t) at training progress t (epochs, fractional)."""
        return lwr_lambda(self.cfg, t, self.total_epochs)

    def __call__(self, weight: Tensor | Sequence[Tensor], t: float) -> tuple[Tensor, Tensor] | None:
        """`weight`: the classifier weight (C, d), or every head's of a multi-head model (the
        mean over heads of R, `lwr_penalty_heads`)."""
        lam = self.lam(t)
        if lam == 0.0 or (isinstance(self.margin, float) and self.margin >= 1.0):
            return None
        cfg = self.cfg
        if isinstance(weight, Tensor):
            r = lwr_penalty(weight, self.margin, cfg.power, cfg.proj, cfg.block_size)
        else:
            r = lwr_penalty_heads(weight, self.margin, cfg.power, cfg.proj, cfg.block_size)
        return lam * r, r.detach()


def build_regularizer(
    cfg: LWRConfig, total_epochs: int, reference: Tensor | None = None
) -> LWR | None:
    """The LWR term for a run, or None when the config leaves it off. `reference`: the
    head's unit rows at initialisation (`reference_rows`), needed by `theta: init`."""
    return LWR(cfg, total_epochs, reference) if cfg.enabled else None
