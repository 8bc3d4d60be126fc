"""The multi-expert losses against float64 computations written from the papers' equations
(RIDE's LDAM-DRW + diversity term, SADE's three expert losses, BalPoE's logit-adjusted
experts): value on fixed inputs, gradient by finite differences (torch.autograd.gradcheck),
and the wiring through the loss modules (the experts' logits from the capture, DRW)."""

from __future__ import annotations

import math

import pytest
import torch

from lwrcli.methods.balpoe import BalPoELoss, balpoe_loss
from lwrcli.methods.ride import RIDELoss, ride_loss
from lwrcli.methods.sade import SADELoss, inverse_prior, sade_loss

F64 = torch.float64
COUNTS = [60, 31, 12, 7, 3]  # distinct counts: the inverse prior is unambiguous
N, K, C = 6, 3, 5


def fixed_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    experts = 3.0 * torch.randn(N, K, C, generator=g, dtype=F64)
    target = torch.tensor([0, 1, 2, 3, 4, 1])
    return experts, target


# --- independent references, written as the papers state them --------------------------------


def log_softmax_row(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ce(z: list[float], y: int) -> float:
    return -log_softmax_row(z)[y]


def soft_ce(z: list[float], q: list[float]) -> float:
    lp = log_softmax_row(z)
    return -sum(qc * lc for qc, lc in zip(q, lp))


def ride_reference(
    experts: torch.Tensor,
    target: torch.Tensor,
    counts: list[int],
    drw: bool,
    s: float = 30.0,
    max_m: float = 0.5,
    alpha: float = -0.2,
    t0: float = 1.0,
    r: float = 0.05,
    beta: float = 0.9999,
) -> float:
    """RIDE (ICLR 2021), Eq. of its loss per expert: LDAM-DRW + α T̄² KL(p̄ ‖ p_k), plain Python."""
    x = experts.tolist()
    ys = target.tolist()
    c = len(counts)
    margins = [max_m * (min(counts) / n) ** 0.25 for n in counts]
    prior = [n / sum(counts) for n in counts]
    if drw:  # class-balanced weights (Cui et al.), normalised to sum C; per-class temperature
        eff = [(1 - beta) / (1 - beta**n) for n in counts]
        w = [e * c / sum(eff) for e in eff]
        raw = [c * p * r + 1 - r for p in prior]
        temps = [t0 * v / max(raw) for v in raw]
    else:
        w = [1.0] * c
        temps = [t0] * c
    t_mean = sum(temps) / c
    total = 0.0
    for k in range(len(x[0])):
        num = den = kl = 0.0
        for i, y in enumerate(ys):
            z = list(x[i][k])
            z[y] -= s * margins[y]
            num += w[y] * ce(z, y)
            den += w[y]
            mean = [sum(x[i][j][cc] for j in range(len(x[i]))) / len(x[i]) for cc in range(c)]
            p = [math.exp(v) for v in log_softmax_row([m / t for m, t in zip(mean, temps)])]
            lq = log_softmax_row([v / t for v, t in zip(x[i][k], temps)])
            kl += sum(pc * (math.log(pc) - lqc) for pc, lqc in zip(p, lq))
        total += num / den + alpha * t_mean**2 * kl / len(ys)
    return total


def sade_reference(
    experts: torch.Tensor, target: torch.Tensor, counts: list[int], tau: float
) -> float:
    """SADE (NeurIPS 2022): CE(z1) + CE(z2 + log π) + CE(z3 + log π - τ log π̃), π̃ = the
    prior's values in reversed order (largest class <-> smallest value)."""
    prior = [n / sum(counts) for n in counts]
    by_size = sorted(range(len(prior)), key=lambda c: -prior[c])  # largest first
    inverse = [0.0] * len(prior)
    for rank, c in enumerate(by_size):
        inverse[c] = prior[by_size[len(prior) - 1 - rank]]
    total = 0.0
    for i, y in enumerate(target.tolist()):
        z1, z2, z3 = experts[i].tolist()
        total += ce(z1, y)
        total += ce([v + math.log(p + 1e-9) for v, p in zip(z2, prior)], y)
        adj = [math.log(p + 1e-9) - tau * math.log(q + 1e-9) for p, q in zip(prior, inverse)]
        total += ce([v + a for v, a in zip(z3, adj)], y)
    return total / len(target)


def balpoe_reference(
    experts: torch.Tensor, q: torch.Tensor, counts: list[int], taus: list[float]
) -> float:
    """BalPoE (CVPR 2023): (1/K) Σ_k CE(z_k + λ_k log π), soft targets q (mixup)."""
    prior = [n / sum(counts) for n in counts]
    total = 0.0
    for i in range(len(q)):
        for k, lam in enumerate(taus):
            z = [v + lam * math.log(p + 1e-9) for v, p in zip(experts[i, k].tolist(), prior)]
            total += soft_ce(z, q[i].tolist())
    return total / (len(q) * len(taus))


# --- values -------------------------------------------------------------------------------


@pytest.mark.parametrize("drw", [False, True])
def test_ride_matches_the_papers_equations(drw: bool) -> None:
    experts, target = fixed_inputs()
    loss = RIDELoss(COUNTS, 0.5, 30.0, -0.2, 1.0, 0.05, 1.0).double()
    weight = cb_weights().double() if drw else None
    got = ride_loss(
        experts,
        experts.mean(1),
        target,
        loss.margins.double(),
        30.0,
        weight,
        loss.temperatures.double() if drw else 1.0,
        -0.2,
    )
    assert float(got) == pytest.approx(ride_reference(experts, target, COUNTS, drw), rel=1e-6)


def test_ride_diversity_term_alone() -> None:
    """With the CE factor negligible, what is left is α T² KL(softmax(z̄/T) ‖ softmax(z_k/T))."""
    experts, target = fixed_inputs(3)
    m = torch.zeros(C, dtype=F64)
    got = ride_loss(experts, experts.mean(1), target, m, 30.0, None, 2.0, -0.2, 1e-12)
    want = 0.0
    for k in range(K):
        for i in range(N):
            p = torch.softmax(experts[i].mean(0) / 2.0, 0).tolist()
            lq = log_softmax_row((experts[i, k] / 2.0).tolist())
            want += sum(pc * (math.log(pc) - lqc) for pc, lqc in zip(p, lq)) / N
    assert float(got) == pytest.approx(-0.2 * 4.0 * want, rel=1e-8, abs=1e-10)


def test_sade_matches_the_papers_equations() -> None:
    experts, target = fixed_inputs(1)
    prior = torch.tensor(COUNTS, dtype=F64) / sum(COUNTS)
    for tau in (0.0, 2.0):
        got = sade_loss(experts, target, prior, tau, None)
        want = sade_reference(experts, target, COUNTS, tau)
        # the three terms are summed; the reference averages per term over the batch
        assert float(got) == pytest.approx(want, rel=1e-9)


def test_inverse_prior_reverses_the_values_and_orders_ties_by_class_id() -> None:
    prior = torch.tensor([0.1, 0.5, 0.05, 0.35], dtype=F64)
    assert inverse_prior(prior).tolist() == [0.35, 0.05, 0.5, 0.1]
    tied = torch.tensor([5.0, 5.0, 1.0]) / 11
    # ascending by (value, class id): class 2, 0, 1 -> reversed values 5, 1 and 5 (/ 11)
    assert (inverse_prior(tied) * 11).round().tolist() == [5.0, 1.0, 5.0]


def test_balpoe_matches_the_papers_equations_with_soft_targets() -> None:
    experts, target = fixed_inputs(2)
    g = torch.Generator().manual_seed(5)
    q = torch.softmax(torch.randn(N, C, generator=g, dtype=F64), 1)  # mixup-like targets
    prior = torch.tensor(COUNTS, dtype=F64) / sum(COUNTS)
    taus = [0.0, 1.0, 2.0]
    got = balpoe_loss(experts, q, prior, torch.tensor(taus, dtype=F64), None)
    assert float(got) == pytest.approx(balpoe_reference(experts, q, COUNTS, taus), rel=1e-9)
    # hard labels are the one-hot case
    onehot = torch.nn.functional.one_hot(target, C).to(F64)
    hard = balpoe_loss(experts, target, prior, torch.tensor(taus, dtype=F64), None)
    assert float(hard) == pytest.approx(balpoe_reference(experts, onehot, COUNTS, taus), rel=1e-9)


def test_balpoe_with_one_expert_at_lambda_one_is_balanced_softmax() -> None:
    """K = 1 with λ = 1 is Balanced Softmax: CE(z + log π) (Ren et al.)."""
    experts, target = fixed_inputs(4)
    prior = torch.tensor(COUNTS, dtype=F64) / sum(COUNTS)
    one = experts[:, :1]
    got = balpoe_loss(one, target, prior, torch.tensor([1.0], dtype=F64), None)
    bs = torch.nn.functional.cross_entropy(one[:, 0] + (prior + 1e-9).log(), target)
    assert float(got) == pytest.approx(float(bs), rel=1e-12)


# --- gradients: finite differences in float64 ---------------------------------------------------


def test_ride_gradient_finite_differences() -> None:
    experts, target = fixed_inputs(6)
    experts = (experts / 10).requires_grad_(True)  # moderate logits: well-conditioned FD
    aggregate = experts.detach().mean(1)  # a constant, as the authors' no_grad softmax
    margins = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=F64)
    temps = torch.tensor([1.0, 0.8, 0.9, 0.7, 0.95], dtype=F64)
    weight = torch.tensor([0.5, 0.8, 1.0, 1.2, 1.5], dtype=F64)
    assert torch.autograd.gradcheck(
        lambda x: ride_loss(x, aggregate, target, margins, 3.0, weight, temps, -0.2),
        (experts,),
        eps=1e-6,
        atol=1e-8,
    )


def test_sade_and_balpoe_gradients_finite_differences() -> None:
    experts, target = fixed_inputs(7)
    experts = experts.requires_grad_(True)
    prior = torch.tensor(COUNTS, dtype=F64) / sum(COUNTS)
    taus = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    assert torch.autograd.gradcheck(
        lambda x: sade_loss(x, target, prior, 2.0, None), (experts,), eps=1e-6, atol=1e-8
    )
    assert torch.autograd.gradcheck(
        lambda x: balpoe_loss(x, target, prior, taus, None), (experts,), eps=1e-6, atol=1e-8
    )


# --- the loss modules: the capture, DRW's temperature, float32 ------------------------------


class _Captured:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def take(self) -> torch.Tensor:
        return self.logits


def cb_weights() -> torch.Tensor:
    eff = [(1 - 0.9999) / (1 - 0.9999**n) for n in COUNTS]
    return torch.tensor([e * C / sum(eff) for e in eff])


def test_modules_read_the_experts_from_the_capture() -> None:
    experts, target = fixed_inputs(8)
    experts = experts.float()
    for weight, drw in ((None, False), (cb_weights(), True)):
        # DRW's class weights also switch RIDE's per-class diversity temperature on
        ride = RIDELoss(COUNTS, 0.5, 30.0, -0.2, 1.0, 0.05, 1.0)
        ride.experts = _Captured(experts)
        got = float(ride(experts.mean(1), target, weight))
        want = ride_reference(experts.double(), target, COUNTS, drw)
        assert got == pytest.approx(want, rel=1e-4)
    sade = SADELoss(COUNTS, 2.0)
    sade.experts = _Captured(experts)
    assert float(sade(experts.mean(1), target)) == pytest.approx(
        sade_reference(experts.double(), target, COUNTS, 2.0), rel=1e-5
    )
    bal = BalPoELoss(COUNTS, [0.0, 1.0, 2.0])
    bal.experts = _Captured(experts)
    q = torch.nn.functional.one_hot(target, C).double()
    assert float(bal(experts.mean(1), target)) == pytest.approx(
        balpoe_reference(experts.double(), q, COUNTS, [0.0, 1.0, 2.0]), rel=1e-5
    )


def test_a_loss_without_the_experts_logits_says_what_is_missing() -> None:
    loss = SADELoss(COUNTS, 2.0)
    with pytest.raises(RuntimeError, match="ExpertCapture"):
        loss(torch.zeros(2, C), torch.tensor([0, 1]))
