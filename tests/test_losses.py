"""Losses against float64 numpy formulas and the identities between them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lwrcli.config import LossConfig
from lwrcli.errors import UserError
from lwrcli.losses import (
    LOSSES,
    BalancedSoftmax,
    CrossEntropy,
    FocalLoss,
    LDAMLoss,
    LogitAdjustment,
    build_loss,
    class_balanced_weights,
    posthoc_logit_adjust,
    reweight_for_epoch,
    tau_normalize,
)

COUNTS = [500, 120, 40, 9, 2]


def np_logsoftmax(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def np_ce(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    nll = -np_logsoftmax(z)[np.arange(len(y)), y]
    if w is None:
        return float(nll.mean())
    return float((w[y] * nll).sum() / w[y].sum())


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 5, generator=g, dtype=torch.float64) * 3, torch.randint(
        0, 5, (16,), generator=g
    )


def test_each_loss_against_numpy(batch) -> None:
    z, y = batch
    zn, yn, n = z.numpy(), y.numpy(), np.array(COUNTS, dtype=np.float64)
    w = np.array([0.2, 0.5, 1.0, 1.5, 1.8])
    wt = torch.tensor(w, dtype=torch.float32)
    assert float(CrossEntropy(COUNTS)(z, y)) == pytest.approx(np_ce(zn, yn), rel=1e-6)
    assert float(CrossEntropy(COUNTS)(z, y, wt)) == pytest.approx(np_ce(zn, yn, w), rel=1e-6)
    assert float(BalancedSoftmax(COUNTS)(z, y)) == pytest.approx(
        np_ce(zn + np.log(n), yn), rel=1e-6
    )
    prior = np.log(n / n.sum())
    assert float(LogitAdjustment(COUNTS, 0.7)(z, y, wt)) == pytest.approx(
        np_ce(zn + 0.7 * prior, yn, w), rel=1e-6
    )
    # Focal: (1 - p_t)^gamma * CE_t, with the class weight on CE_t, mean over samples.
    logp = np_logsoftmax(zn)[np.arange(16), yn]
    focal = ((1 - np.exp(logp)) ** 2 * -logp * w[yn]).mean()
    assert float(FocalLoss(COUNTS, 2.0)(z, y, wt)) == pytest.approx(focal, rel=1e-5)
    # LDAM on cosine logits: margins max_m * (n_min / n)^(1/4), target only, scale s.
    cos = np.tanh(zn)
    margins = 0.5 * (n.min() / n) ** 0.25
    adj = cos.copy()
    adj[np.arange(16), yn] -= margins[yn]
    assert float(LDAMLoss(COUNTS, 0.5, 30.0)(torch.tensor(cos), y)) == pytest.approx(
        np_ce(30.0 * adj, yn), rel=1e-5
    )


def test_identities(batch) -> None:
    z, y = batch
    ce = CrossEntropy(COUNTS)(z, y)
    assert torch.allclose(LogitAdjustment(COUNTS, 0.0)(z, y), ce)
    assert torch.allclose(BalancedSoftmax([7] * 5)(z, y), ce)
    assert torch.allclose(
        LogitAdjustment(COUNTS, 1.0)(z, y), BalancedSoftmax(COUNTS)(z, y), atol=1e-6
    )
    cos = torch.tanh(z)
    assert torch.allclose(LDAMLoss(COUNTS, 0.0, 1.0)(cos, y), CrossEntropy(COUNTS)(cos, y))
    assert torch.allclose(FocalLoss(COUNTS, 0.0)(z, y), ce)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_finite_for_extreme_logits(gamma: float) -> None:
    z = torch.tensor([[1e4, -1e4, 0.0], [-50.0, 60.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = FocalLoss([3, 2, 1], gamma)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_class_balanced_weights_closed_form() -> None:
    beta = 0.999
    w = class_balanced_weights(COUNTS, beta)
    n = np.array(COUNTS, dtype=np.float64)
    raw = (1 - beta) / (1 - beta**n)
    assert np.allclose(w.numpy(), raw / raw.sum() * 5)
    assert float(w.sum()) == pytest.approx(5.0)


def test_reweight_schedule() -> None:
    cfg = LossConfig(reweight="drw", drw_epoch=160)
    assert reweight_for_epoch(cfg, COUNTS, 159) is None
    assert torch.allclose(
        reweight_for_epoch(cfg, COUNTS, 160), class_balanced_weights(COUNTS, 0.9999)
    )
    assert reweight_for_epoch(LossConfig(reweight="none"), COUNTS, 199) is None
    assert reweight_for_epoch(LossConfig(reweight="cb"), COUNTS, 0) is not None


@pytest.mark.parametrize("name", ["bs", "la", "ldam"])
def test_zero_count_class_is_a_clear_error(name: str) -> None:
    with pytest.raises(UserError, match="class ids 2"):
        build_loss(LossConfig(name=name), [5, 3, 0])
    with pytest.raises(UserError, match="none"):
        build_loss(LossConfig(name="ce", reweight="drw"), [5, 0])
    build_loss(LossConfig(name="ce"), [5, 3, 0])  # CE does not need counts


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_build_every_loss_bf16_logits_give_float32(name: str) -> None:
    loss = build_loss(LossConfig(name=name), COUNTS)
    z = torch.randn(4, 5).bfloat16()
    if name == "ldam":
        z = torch.tanh(z)
    out = loss(z, torch.tensor([0, 1, 2, 3]))
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_posthoc_adjustment_flips_predictions_as_the_formula_says() -> None:
    counts = [1000, 10]
    z = torch.tensor([[2.0, 0.0]])  # the head wins on raw logits
    # log pi = log(1000/1010), log(10/1010): the tail gains tau * log(100) = 4.6 > 2.
    adjusted = posthoc_logit_adjust(z, counts, 1.0)
    assert torch.allclose(adjusted, z - torch.log(torch.tensor([1000 / 1010, 10 / 1010])))
    assert z.argmax(1).item() == 0 and adjusted.argmax(1).item() == 1
    assert posthoc_logit_adjust(z, counts, 0.4).argmax(1).item() == 0  # 0.4 * 4.6 < 2


def test_tau_normalisation() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    assert torch.allclose(tau_normalize(w, 1.0).norm(dim=1), torch.ones(2))
    assert torch.allclose(tau_normalize(w, 0.0), w)
    half = tau_normalize(w, 0.5)
    assert torch.allclose(half.norm(dim=1), torch.tensor([5.0**0.5, 0.5**0.5]))
    x = torch.tensor([[0.1, 1.0]])  # feature aligned with the small tail vector
    assert (x @ w.t()).argmax().item() == 0 and (x @ tau_normalize(w, 1.0).t()).argmax().item() == 1
