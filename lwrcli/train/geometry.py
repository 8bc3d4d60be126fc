"""Class-vector geometry of a classifier weight, cheap enough to log every epoch.

What LWR changes, measured without autograd and in row blocks (as the regularizer), so
C = 1000 or 8142 classes never build a C x C matrix: the max and mean pairwise cosine (of
the projected rows when `proj`, i.e. as LWR sees them, plus the raw rows' as analyze-weights
reports them), R at the run's θ (also when LWR is off, so a baseline shows what LWR would
have penalised), the pairs above θ, and the many-/few-shot weight-norm ratio.

A model with K classifier heads (experts) keeps these keys for its first head and adds the
mean over heads of each (`<key>_heads_mean`), `geom_heads` = K and `geom_expert_cos`, the
mean cosine between two experts' vectors of the same class (`heads_geometry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lwrcli.data.manifest import shot_groups
from lwrcli.train.lwr import Margin, head_margin, margin_block, project_rows, shared_direction


@torch.no_grad()
def pair_stats(
    weight: Tensor, theta: Margin, power: int = 1, proj: bool = True, block_size: int = 1024
) -> dict[str, Tensor]:
    """Blockwise statistics over ordered pairs i ≠ j of the (projected) unit rows of W (C, d).

    Returns 0-dim float64 tensors on W's device (no host sync): `sum` of cosines, `max`
    cosine, `above` (ordered pairs with s_ij > θ) and `hinge` (Σ max(0, s_ij - θ)^p).
    Cosines are clamped to [-1, 1] like lwrcli.train.lwr, so `hinge / (C (C-1))` is R(W). θ may be
    reference rows (`theta: init`): each pair's margin is then its cosine at initialisation.
    """
    w = weight.detach()
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    if proj:
        w = project_rows(w, shared_direction(w))
    v = F.normalize(w, dim=1, eps=1e-12)
    c = v.shape[0]
    acc = torch.zeros(3, dtype=torch.float64, device=v.device)  # sum, above, hinge
    best = torch.full((), -float("inf"), dtype=torch.float64, device=v.device)
    for r0 in range(0, c, block_size):
        r1 = min(r0 + block_size, c)
        s = (v[r0:r1] @ v.t()).clamp_(-1.0, 1.0)
        # -2 lies below every cosine and every θ: the diagonal drops out of max/above/hinge.
        s.diagonal(offset=r0).fill_(-2.0)
        m = margin_block(theta.to(v) if isinstance(theta, Tensor) else theta, r0, r1)
        h = (s - m).clamp_min_(0.0)
        block = torch.stack(
            [
                s.sum(dtype=torch.float64) + 2.0 * (r1 - r0),
                (s > m).sum().to(torch.float64),
                (h if power == 1 else h.pow_(power)).sum(dtype=torch.float64),
            ]
        )
        acc += block
        best = torch.maximum(best, s.max().to(torch.float64))
    return {"sum": acc[0], "max": best, "above": acc[1], "hinge": acc[2]}


def pairs_above(weight: Tensor, theta: Margin, proj: bool = True, block_size: int = 1024) -> Tensor:
    """Unordered class pairs whose (projected) cosine exceeds θ: what LWR currently repels."""
    return pair_stats(weight, theta, 1, proj, block_size)["above"] / 2


@torch.no_grad()
def class_geometry(
    weight: Tensor,
    class_counts: Sequence[int],
    theta: Margin,
    proj: bool = True,
    block_size: int = 1024,
    power: int = 1,
) -> dict[str, Any]:
    """The epoch record's geometry of W (C, d) given train counts (C,), as plain floats.

    `geom_cos_max/mean` are over pairs i ≠ j of the rows as LWR sees them (projected when
    `proj`); `geom_raw_cos_max/mean` of the raw rows (analyze-weights' `overall`);
    `geom_r` = R(W) at θ/power/proj; `geom_frac_above` the fraction of pairs with s_ij > θ;
    `geom_norm_ratio` = mean ‖w_c‖ of many-shot / few-shot classes (None if a group is empty).
    """
    c = weight.shape[0]
    out: dict[str, Any] = {}
    if c < 2:
        return out
    pairs = c * (c - 1)
    seen = pair_stats(weight, theta, power, proj, block_size)
    raw = pair_stats(weight, theta, power, False, block_size) if proj else seen
    vals = torch.stack(
        [seen["sum"], seen["max"], seen["hinge"], seen["above"], raw["sum"], raw["max"]]
    ).tolist()  # the one host sync
    out["geom_cos_mean"] = vals[0] / pairs
    out["geom_cos_max"] = vals[1]
    out["geom_r"] = vals[2] / pairs
    out["geom_frac_above"] = vals[3] / pairs
    out["geom_pairs_above"] = int(vals[3]) // 2
    out["geom_raw_cos_mean"] = vals[4] / pairs
    out["geom_raw_cos_max"] = vals[5]
    norms = weight.detach().double().norm(dim=1).cpu()
    groups = shot_groups(class_counts)
    many, few = groups["many"], groups["few"]
    ratio = None
    if many and few and float(norms[few].mean()) > 0:
        ratio = float(norms[many].mean() / norms[few].mean())
    out["geom_norm_ratio"] = ratio
    out["geom_theta"] = "init" if isinstance(theta, Tensor) else float(theta)
    return out


@torch.no_grad()
def gradient_share(
    weight: Tensor, lwr_grad: Tensor, theta: Margin, proj: bool = True, block_size: int = 1024
) -> dict[str, Tensor]:
    """LWR's share of the classifier gradient, |λ ∇_W R| / |∇_W L_task| (Frobenius), read
    after backward, and the pairs LWR repels. The task gradient is the total minus LWR's
    (DDP has averaged the total; LWR's part is the same on every rank), before clipping."""
    task = weight.grad - lwr_grad if weight.grad is not None else -lwr_grad
    return {
        "lwr_share": lwr_grad.norm() / task.norm().clamp_min(1e-30),
        "lwr_pairs_above": pairs_above(weight, theta, proj, block_size),
    }


@torch.no_grad()
def expert_cosine(weights: Sequence[Tensor]) -> float | None:
    """Mean cosine between the vectors of the same class in two different heads, over classes
    and head pairs (None for one head or heads of different shapes)."""
    if len(weights) < 2 or len({tuple(w.shape) for w in weights}) != 1:
        return None
    unit = [F.normalize(w.detach().double(), dim=1, eps=1e-12) for w in weights]
    pairs = [(unit[a] * unit[b]).sum(1).mean() for a in range(len(unit)) for b in range(a)]
    return float(torch.stack(pairs).mean())


@torch.no_grad()
def heads_geometry(
    weights: Sequence[Tensor],
    class_counts: Sequence[int],
    theta: Margin,
    proj: bool = True,
    block_size: int = 1024,
    power: int = 1,
) -> dict[str, Any]:
    """`class_geometry` of the first head; with K > 1 heads also `geom_heads`, each number's
    mean over the heads (`<key>_heads_mean`, None where a head has none) and
    `geom_expert_cos` (`expert_cosine`). Head k's margin is `head_margin(theta, k)`."""
    first = class_geometry(weights[0], class_counts, head_margin(theta, 0), proj, block_size, power)
    if len(weights) == 1:
        return first
    rest = [
        class_geometry(w, class_counts, head_margin(theta, k), proj, block_size, power)
        for k, w in enumerate(weights[1:], 1)
    ]
    out = dict(first, geom_heads=len(weights))
    for key, value in first.items():
        if key == "geom_theta":
            continue
        values = [value, *(g.get(key) for g in rest)]
        out[f"{key}_heads_mean"] = (
            None if any(v is None for v in values) else sum(values) / len(values)
        )
    out["geom_expert_cos"] = expert_cosine(weights)
    return out


@torch.no_grad()
def heads_gradient_share(
    weights: Sequence[Tensor],
    lwr_grads: Sequence[Tensor],
    theta: Margin,
    proj: bool = True,
    block_size: int = 1024,
) -> dict[str, Tensor]:
    """`gradient_share` of one head; of K heads: |λ ∇R| / |∇L_task| over all heads' weights
    together (Frobenius) and the mean over heads of the pairs LWR repels."""
    if len(weights) == 1:
        return gradient_share(weights[0], lwr_grads[0], head_margin(theta, 0), proj, block_size)
    lwr_sq = sum(g.double().pow(2).sum() for g in lwr_grads)
    task_sq = sum(
        (w.grad - g if w.grad is not None else -g).double().pow(2).sum()
        for w, g in zip(weights, lwr_grads)
    )
    above = [pairs_above(w, head_margin(theta, k), proj, block_size) for k, w in enumerate(weights)]
    return {
        "lwr_share": (lwr_sq.sqrt() / task_sq.sqrt().clamp_min(1e-30)).float(),
        "lwr_pairs_above": torch.stack(above).mean(),
    }
