"""Task losses against independent float64 numpy formulas, identities, edge cases, factories."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from lwrcli.config import LossSection, loss_section
from lwrcli.config.slots import methods_of
from lwrcli.errors import UserError
from lwrcli.methods.balanced_softmax import BalancedSoftmax
from lwrcli.methods.ce import CrossEntropy
from lwrcli.methods.focal import FocalLoss
from lwrcli.methods.ldam import LDAMLoss
from lwrcli.methods.logit_adjustment import LogitAdjustment
from lwrcli.methods.losses import (
    CountsLoss,
    build_loss,
    class_balanced_weights,
    posthoc_logit_adjust,
    reweight_for_epoch,
    soft_target_losses,
    tau_normalize,
)

COUNTS = [500, 120, 40, 9, 2]
# Config name -> loss class of every registered loss (the registry's loss slot).
LOSSES = {name: method.loss_class for name, method in methods_of("loss").items()}
# Those that take bare logits (the rest read what the model kept of the step, e.g. augmented
# views: their formulas are tested on those outputs in their own test files).
BARE = {name: cls for name, cls in LOSSES.items() if not cls.needs_model_outputs}
SOFT_BARE = [name for name in soft_target_losses() if name in BARE]


# --- independent float64 references -----------------------------------------------------------


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_ce(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean CE; with class weights, Σ w_y ℓ / Σ w_y (F.cross_entropy's weighted mean)."""
    nll = -np_log_softmax(z)[np.arange(len(y)), y]
    wy = np.ones(len(y)) if w is None else w[y]
    return float((wy * nll).sum() / wy.sum())


def np_focal(z: np.ndarray, y: np.ndarray, gamma: float, w: np.ndarray | None) -> float:
    p = np.exp(np_log_softmax(z))[np.arange(len(y)), y]
    wy = np.ones(len(y)) if w is None else w[y]
    return float(np.mean(wy * (1 - p) ** gamma * -np.log(p)))


def np_ldam(z, y, counts, max_m, s, w) -> float:
    n = np.asarray(counts, dtype=np.float64)
    m = n**-0.25
    m = m * (max_m / m.max())
    z2 = z.copy()
    z2[np.arange(len(y)), y] -= m[y]
    return np_ce(s * z2, y, w)


def np_loss(name: str, z: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    n = np.asarray(COUNTS, dtype=np.float64)
    if name == "ce":
        return np_ce(z, y, w)
    if name == "focal":
        return np_focal(z, y, 2.0, w)
    if name == "ldam":
        return np_ldam(z, y, COUNTS, 0.5, 30.0, w)
    if name == "bs":
        return np_ce(z + np.log(n), y, w)
    if name in ("ib", "seql"):  # cfg_for: IB before its switch epoch, SEQL with γ = 0 are CE
        return np_ce(z, y, w)  # (their own formulas: tests/test_losses_ib_seql.py)
    if name == "dr":  # 1/2 (cos_y - 1)^2, weighted mean Σ w_y ℓ / Σ w_y
        wy = np.ones(len(y)) if w is None else w[y]
        return float((wy * 0.5 * (z[np.arange(len(y)), y] - 1.0) ** 2).sum() / wy.sum())
    return np_ce(z + 1.5 * np.log(n / n.sum()), y, w)  # la, tau 1.5


# Each loss's own settings for the formula tests (np_loss above); other losses take defaults.
HYPER: dict[str, dict[str, float]] = {
    "focal": {"gamma": 2.0},
    "ldam": {"max_m": 0.5, "s": 30.0},
    "la": {"tau": 1.5},
    "seql": {"gamma": 0.0},
}


def cfg_for(name: str) -> LossSection:
    """The loss section of `name` with the settings np_loss assumes."""
    return loss_section(name=name, **HYPER.get(name, {}))


def batch(seed: int = 0, n: int = 12, c: int = 5, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, dtype=torch.float64, generator=g) * scale
    y = torch.randint(0, c, (n,), generator=g)
    w = torch.rand(c, dtype=torch.float64, generator=g) * 2 + 0.1
    return z, y, w


# --- each loss against its formula ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BARE))
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_numpy(name: str, weighted: bool) -> None:
    z, y, w = batch(seed=len(name))
    if name == "ldam":
        z = torch.tanh(z)  # LDAM receives cosines in [-1, 1]
    loss = build_loss(cfg_for(name), COUNTS)
    got = loss(z.float(), y, w.float() if weighted else None)
    expected = np_loss(name, z.numpy(), y.numpy(), w.numpy() if weighted else None)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=2e-6)
    got64 = loss(z, y, w if weighted else None)  # float64 logits are not downcast
    assert got64.dtype == torch.float64
    assert float(got64) == pytest.approx(expected, rel=1e-6)


def test_ldam_margins_follow_the_quarter_power_law() -> None:
    loss = LDAMLoss(COUNTS, max_m=0.5, s=30.0)
    n = np.asarray(COUNTS, dtype=np.float64)
    assert np.allclose(loss.margins.numpy(), 0.5 * (2.0 / n) ** 0.25, rtol=1e-6)
    assert float(loss.margins.max()) == pytest.approx(0.5)  # the rarest class gets max_m


# --- identities --------------------------------------------------------------------------------


def test_identities_with_cross_entropy() -> None:
    z, y, w = batch(seed=3)
    z, w = z.float(), w.float()
    for wt in (None, w):
        ce = CrossEntropy(COUNTS)(z, y, wt)
        assert torch.allclose(LogitAdjustment(COUNTS, tau=0.0)(z, y, wt), ce, rtol=1e-6)
        assert torch.allclose(BalancedSoftmax([7] * 5)(z, y, wt), ce, rtol=1e-6)
        bs = BalancedSoftmax(COUNTS)(z, y, wt)
        assert torch.allclose(LogitAdjustment(COUNTS, tau=1.0)(z, y, wt), bs, rtol=1e-6)
        cos = torch.tanh(z)
        ldam = LDAMLoss(COUNTS, max_m=0.0, s=1.0)(cos, y, wt)
        assert torch.allclose(ldam, CrossEntropy(COUNTS)(cos, y, wt), rtol=1e-6)
    assert torch.allclose(FocalLoss(COUNTS, gamma=0.0)(z, y), CrossEntropy(COUNTS)(z, y), rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_is_finite_with_extreme_logits(gamma: float) -> None:
    z = torch.tensor(
        [[1e4, -1e4, 0.0], [0.0, 3e4, -3e4], [-1e4, 1e4, 0.0], [50.0, 0.0, -50.0]],
        requires_grad=True,
    )
    y = torch.tensor([0, 1, 0, 0])  # p_t rounds to 1, 1, 0, and 1 - 2e-22
    loss = FocalLoss([1, 1, 1], gamma)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and z.grad is not None and torch.isfinite(z.grad).all()
    # Only the confidently wrong sample contributes: CE = 2e4 and (1 - p_t)^γ = 1.
    assert float(loss.detach()) == pytest.approx(2e4 / 4, rel=1e-6)
    confident = torch.tensor([[4.0, 0.0]])
    expected = np_focal(confident.double().numpy(), np.array([0]), gamma, None)
    got = FocalLoss([1, 1], gamma)(confident, torch.tensor([0]))
    assert float(got) == pytest.approx(expected, rel=1e-5)


# --- class-balanced weights and DRW ------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_class_balanced_weights_closed_form(beta: float) -> None:
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    expected = [r * len(COUNTS) / sum(raw) for r in raw]
    got = class_balanced_weights(torch.tensor(COUNTS), beta)
    assert got.tolist() == pytest.approx(expected, rel=1e-9)
    assert float(got.sum()) == pytest.approx(len(COUNTS), rel=1e-12)


def test_reweight_for_epoch() -> None:
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    cb = class_balanced_weights(counts, 0.99)
    assert reweight_for_epoch(loss_section(reweight="none"), counts, 500) is None
    always = loss_section(reweight="cb", beta=0.99)
    assert torch.equal(reweight_for_epoch(always, counts, 0), cb)
    drw = loss_section(reweight="drw", drw_epoch=3, beta=0.99)
    assert reweight_for_epoch(drw, counts, 2) is None
    assert torch.equal(reweight_for_epoch(drw, counts, 3), cb)
    assert torch.equal(reweight_for_epoch(drw, COUNTS, 10), cb)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bs", "la", "ldam"])
def test_zero_count_class_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match=r"class ids 2"):
        build_loss(loss_section(name=name), [10, 3, 0, 4])


def test_zero_count_class_is_fine_for_ce_and_focal_without_reweighting() -> None:
    z, y, _ = batch(c=4)
    for name in ("ce", "focal"):
        assert torch.isfinite(build_loss(loss_section(name=name), [10, 3, 0, 4])(z.float(), y))
        with pytest.raises(UserError, match="re-weighting"):
            build_loss(loss_section(name=name, reweight="drw"), [10, 3, 0, 4])
    with pytest.raises(UserError):
        class_balanced_weights([10, 0, 3], 0.99)
    with pytest.raises(UserError):
        posthoc_logit_adjust(z, [10, 3, 0, 4], 1.0)


def test_bad_counts_and_shapes_are_user_errors() -> None:
    with pytest.raises(UserError, match="non-negative"):
        CrossEntropy([3, -1, 2])
    with pytest.raises(UserError, match="one number per class"):
        CrossEntropy([])
    with pytest.raises(UserError, match="3 classes"):
        CrossEntropy([3, 1, 2])(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))


# --- precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BARE))
def test_bf16_logits_give_a_float32_loss(name: str) -> None:
    z, y, w = batch(seed=1)
    z = torch.tanh(z).bfloat16().requires_grad_(True)
    loss_fn = build_loss(loss_section(name=name), COUNTS)
    loss_fn.set_position(0, 0)  # SEQL: both calls below draw the same β
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(z, y, w.bfloat16())
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert z.grad is not None and z.grad.dtype == torch.bfloat16
    loss_fn.set_position(0, 0)
    expected = loss_fn(z.detach().float(), y, w.bfloat16().float())
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)


# --- evaluation-time adjustments ---------------------------------------------------------------


def test_posthoc_logit_adjustment_flips_exactly_at_the_predicted_margin() -> None:
    counts = [90, 10]
    # Adjusted z_0 - z_1 = (z_0 - z_1) - τ log(π_0/π_1): class 1 wins iff gap < τ log 9.
    gap = 0.5
    logits = torch.tensor([[gap, 0.0]])
    threshold_tau = gap / np.log(9.0)  # 0.2276
    for tau, winner in ((0.0, 0), (threshold_tau * 0.9, 0), (threshold_tau * 1.1, 1), (1.0, 1)):
        adjusted = posthoc_logit_adjust(logits, counts, tau)
        assert int(adjusted.argmax()) == winner
        expected = [gap - tau * np.log(0.9), -tau * np.log(0.1)]
        assert adjusted[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_tau_normalization_flips_exactly_as_the_norms_say() -> None:
    # Rows e_0 * 3 and e_1 * 1, feature x = (1, 2): logits (3, 2) -> |w_c|^(1-τ) x_c = (3^(1-τ), 2).
    # Class 1 wins iff 3^(1-τ) < 2, i.e. τ > 1 - log 2 / log 3 = 0.369.
    w = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([1.0, 2.0])
    cut = 1 - np.log(2) / np.log(3)
    for tau, winner in ((0.0, 0), (cut - 0.01, 0), (cut + 0.01, 1), (1.0, 1)):
        wt = tau_normalize(w, tau)
        assert int((wt @ x).argmax()) == winner
        assert wt.norm(dim=1).tolist() == pytest.approx([3.0 ** (1 - tau), 1.0], rel=1e-6)
    assert torch.equal(tau_normalize(torch.zeros(2, 3), 1.0), torch.zeros(2, 3))


# --- the factory --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_build_loss_for_every_name(name: str) -> None:
    own = {"focal": {"gamma": 0.5}, "ldam": {"max_m": 0.3, "s": 10.0}, "la": {"tau": 0.7}}
    cfg = loss_section(name=name, **own.get(name, {}))
    loss_fn = build_loss(cfg, torch.tensor(COUNTS))
    assert type(loss_fn) is LOSSES[name]
    assert "class_counts" in dict(loss_fn.named_buffers())
    assert loss_fn.class_counts.tolist() == COUNTS
    hyper = {"focal": ("gamma", 0.5), "ldam": ("s", 10.0), "la": ("tau", 0.7)}.get(name)
    if hyper is not None:
        assert getattr(loss_fn, hyper[0]) == hyper[1]
    if loss_fn.needs_model_outputs:  # called on the model's kept outputs: its own tests
        return
    z, y, w = batch(seed=2)
    z = torch.tanh(z).float().requires_grad_(True)
    loss = loss_fn(z, y, w.float())
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and z.grad is not None


def test_every_configurable_loss_has_a_class() -> None:
    """The names the config's loss slot accepts and the losses build_loss makes are the same
    set, so a name that validates always builds (build_loss needs no check of its own)."""
    for name, method in methods_of("loss").items():
        assert get_args(method.config.model_fields["name"].annotation) == (name,)
        assert issubclass(method.config, LossSection) and issubclass(LOSSES[name], CountsLoss)
        section = loss_section(name=name)
        assert type(section) is method.config
        assert type(build_loss(section, COUNTS)) is LOSSES[name]
    with pytest.raises(ValueError, match="not a registered loss"):
        loss_section(name="nope")


# --- soft targets (mixup, CutMix, label smoothing, BBN) -----------------------------------------


@pytest.mark.parametrize("name", SOFT_BARE)
@pytest.mark.parametrize("weighted", [False, True])
def test_one_hot_soft_targets_give_the_hard_label_loss(name: str, weighted: bool) -> None:
    z, y, w = batch(seed=3)
    loss = build_loss(cfg_for(name), COUNTS)
    one_hot = torch.nn.functional.one_hot(y, z.shape[1]).double()
    hard = loss(z, y, w if weighted else None)
    soft = loss(z, one_hot, w if weighted else None)
    assert float(soft) == pytest.approx(float(hard), rel=1e-12)


@pytest.mark.parametrize("name", SOFT_BARE)
def test_soft_target_loss_is_the_mix_of_hard_losses(name: str) -> None:
    # Cross-entropy is linear in the target: q = a e_y1 + (1 - a) e_y2 gives a mix of hard losses
    # (unweighted), and the weighted mean follows Σ w_c q_ic ℓ_ic / Σ w_c q_ic computed by numpy.
    z, y, w = batch(seed=4)
    y2 = y.roll(1)
    a = 0.3
    loss = build_loss(cfg_for(name), COUNTS)
    c = z.shape[1]
    q = a * torch.nn.functional.one_hot(y, c).double()
    q += (1 - a) * torch.nn.functional.one_hot(y2, c).double()
    expected = a * float(loss(z, y)) + (1 - a) * float(loss(z, y2))
    assert float(loss(z, q)) == pytest.approx(expected, rel=1e-12)
    shift = {"ce": 0.0, "bs": np.log(np.asarray(COUNTS, dtype=np.float64))}.get(name)
    if name == "la":
        counts = np.asarray(COUNTS, dtype=np.float64)
        shift = HYPER["la"]["tau"] * np.log(counts / counts.sum())
    if name == "dr":  # per-class term 1/2 (z_c - 1)^2 (the mixup criterion of the ETF paper)
        nll = 0.5 * (z.numpy() - 1.0) ** 2
    else:
        nll = -np_log_softmax(z.numpy() + shift)
    wq = q.numpy() * w.numpy()
    # The prior buffers are float32: agreement to float32's precision.
    assert float(loss(z, q, w)) == pytest.approx((wq * nll).sum() / wq.sum(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(set(LOSSES) - set(soft_target_losses())))
def test_losses_without_soft_targets_refuse_them(name: str) -> None:
    z, y, _ = batch(seed=5)
    loss = build_loss(cfg_for(name), COUNTS)
    with pytest.raises(UserError, match="soft targets"):
        loss(torch.tanh(z), torch.nn.functional.one_hot(y, z.shape[1]).double())
