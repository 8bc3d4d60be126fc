"""The contrastive losses against independent float64 computations written from the papers'
equations (PaCo/GPaCo: Cui et al. ICCV 2021 / TPAMI 2023, as the authors' LT/losses.py
computes it; BCL: Zhu et al. CVPR 2022, the authors' BalSCL): value, and gradient against
central finite differences of the reference."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lwrcli.methods.bcl import BCLLossModule, bcl_loss
from lwrcli.methods.contrastive import FeatureQueue
from lwrcli.methods.paco import PaCoLossModule, paco_loss
from lwrcli.models.contrastive import ViewsOutput

# --- references (plain Python / numpy float64, one anchor at a time) -------------------------


def paco_reference(
    anchors: np.ndarray,
    anchor_labels: list[int],
    contrast: np.ndarray,
    contrast_labels: list[int],
    self_index: list[int],
    centre: np.ndarray,
    alpha: float,
    beta: float,
    gamma: float,
    tau: float,
    tau_c: float,
) -> float:
    """L_i = -[β (s_iy - log D_i) + α Σ_{p∈P(i)} (q_i·a_p/τ - log D_i)] / (β + α|P(i)|),
    D_i = Σ_c exp(s_ic) + γ Σ_{j≠i} exp(q_i·a_j/τ), s_ic = centre_ic / τ_c; mean over i."""
    total = 0.0
    for i in range(anchors.shape[0]):
        sims = [float(anchors[i] @ contrast[j]) / tau for j in range(contrast.shape[0])]
        others = [j for j in range(contrast.shape[0]) if j != self_index[i]]
        cent = [float(c) / tau_c for c in centre[i]]
        d = sum(math.exp(c) for c in cent) + gamma * sum(math.exp(sims[j]) for j in others)
        positives = [j for j in others if contrast_labels[j] == anchor_labels[i]]
        num = beta * (cent[anchor_labels[i]] - math.log(d))
        num += alpha * sum(sims[j] - math.log(d) for j in positives)
        total += -num / (beta + alpha * len(positives))
    return total / anchors.shape[0]


def bcl_reference(feats: np.ndarray, labels: list[int], protos: np.ndarray, tau: float) -> float:
    """BCL's L_i = -1/|P(i)| Σ_{p∈P(i)} log(exp(z_i·z_p/τ) / Σ_k 1/(n_k - [k=y_i]) Σ_{j∈k,
    j≠i} exp(z_i·z_j/τ)) over the 2N view embeddings plus the C prototypes; mean over the
    view embeddings."""
    n, v, _ = feats.shape
    vecs = [feats[b, view] for view in range(v) for b in range(n)] + list(protos)
    labs = [labels[b] for view in range(v) for b in range(n)] + list(range(protos.shape[0]))
    count = {k: labs.count(k) for k in set(labs)}
    total = 0.0
    anchors = v * n
    for i in range(anchors):
        den = 0.0
        for k in count:
            members = [j for j in range(len(vecs)) if labs[j] == k and j != i]
            size = count[k] - (1 if k == labs[i] else 0)
            den += sum(math.exp(float(vecs[i] @ vecs[j]) / tau) for j in members) / size
        pos = [j for j in range(len(vecs)) if labs[j] == labs[i] and j != i]
        total += -sum(float(vecs[i] @ vecs[p]) / tau - math.log(den) for p in pos) / len(pos)
    return total / anchors


def finite_differences(f: Callable[[list[np.ndarray]], float], xs: list[np.ndarray], h=1e-6):
    """Central differences of f with respect to every entry of every array in xs."""
    grads = []
    for x in xs:
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + h
            up = f(xs)
            x[idx] = old - h
            down = f(xs)
            x[idx] = old
            g[idx] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def unit(rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=1)


# --- PaCo / GPaCo ------------------------------------------------------------------------------

CASES = {
    # anchors q; contrast [q, k, queue] (PaCo)
    "paco-queue": dict(generalized=False, queue=5, alpha=0.05, beta=1.0, gamma=1.0, tau_c=1.0),
    "paco-no-queue": dict(generalized=False, queue=0, alpha=0.3, beta=1.0, gamma=1.0, tau_c=1.0),
    # anchors [q, k]; contrast [q, k, queue] (GPaCo); γ and the centre temperature not 1
    "gpaco-queue": dict(generalized=True, queue=4, alpha=0.5, beta=0.7, gamma=0.5, tau_c=2.0),
    "gpaco-no-queue": dict(generalized=True, queue=0, alpha=1.0, beta=1.0, gamma=1.0, tau_c=1.0),
}


def _paco_inputs(case: dict, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n, c, p = 4, 3, 5
    q, k, queue = unit(n, p, gen), unit(n, p, gen), unit(case["queue"], p, gen)
    y = torch.randint(0, c, (n,), generator=gen)
    yq = torch.randint(0, c, (case["queue"],), generator=gen)
    logits = torch.randn(2 * n if case["generalized"] else n, c, generator=gen, dtype=torch.float64)
    if case["generalized"]:
        anchors, labels = torch.cat([q, k]), torch.cat([y, y])
    else:
        anchors, labels = q, y
    contrast, contrast_labels = torch.cat([q, k, queue]), torch.cat([y, y, yq])
    return anchors, labels, contrast, contrast_labels, logits


@pytest.mark.parametrize("name", list(CASES))
def test_paco_loss_value_and_gradient_equal_the_equation(name: str) -> None:
    case = CASES[name]
    anchors, labels, contrast, contrast_labels, centre = _paco_inputs(case)
    self_index = torch.arange(anchors.shape[0])
    hyper = (case["alpha"], case["beta"], case["gamma"], 0.2, case["tau_c"])
    xs = [t.clone().requires_grad_(True) for t in (anchors, contrast, centre)]
    value = paco_loss(xs[0], labels, xs[1], contrast_labels, self_index, xs[2], *hyper)
    value.backward()

    def ref(arrays: list[np.ndarray]) -> float:
        a, m, z = arrays
        return paco_reference(
            a, labels.tolist(), m, contrast_labels.tolist(), self_index.tolist(), z, *hyper
        )

    arrays = [t.detach().numpy().copy() for t in (anchors, contrast, centre)]
    assert value.item() == pytest.approx(ref(arrays), rel=1e-12, abs=1e-12)
    for x, g in zip(xs, finite_differences(ref, arrays)):
        np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-6, atol=1e-8)


def test_paco_loss_without_sample_terms_is_cross_entropy_on_the_centres() -> None:
    """γ = 0 and α = 0 leave only the centre term: CE on the centre logits (the balanced
    softmax when the prior is added), a check independent of the loop reference."""
    anchors, labels, contrast, contrast_labels, centre = _paco_inputs(CASES["paco-queue"])
    out = paco_loss(
        anchors, labels, contrast, contrast_labels, torch.arange(4), centre, 0.0, 1.0, 0.0, 0.2
    )
    assert float(out) == pytest.approx(float(F.cross_entropy(centre, labels)), rel=1e-12)


class _Net:
    """A stand-in network whose kept outputs are fixed tensors."""

    def __init__(self, out: ViewsOutput) -> None:
        self.out = out

    def take(self) -> ViewsOutput:
        return self.out


class _Keys:
    def __init__(self, k: torch.Tensor) -> None:
        self.k = k

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.k


def _section(**kw) -> SimpleNamespace:
    base = dict(alpha=0.1, centre_weight=1.0, gamma=1.0, temperature=0.2, centre_temperature=1.0)
    return SimpleNamespace(**{**base, "balanced": True, **kw})


@pytest.mark.parametrize("generalized", [False, True])
def test_paco_module_wires_views_queue_and_prior_as_the_equation(generalized: bool) -> None:
    """The loss module on a network's kept views: GPaCo's anchors are both views with their
    own centre logits, PaCo's the first view with keys from the key encoder; both contrast
    [q, k, queue] and add log π to the centre logits; the step's keys enter the queue only
    at commit."""
    gen = torch.Generator().manual_seed(3)
    counts = [6, 3, 1]
    n, c, p = 3, 3, 4
    q, k = unit(n, p, gen).float(), unit(n, p, gen).float()
    logits = torch.randn(n, 2 if generalized else 1, c, generator=gen)
    y = torch.tensor([0, 2, 0])
    emb = torch.stack([q, k], 1) if generalized else q[:, None]
    rest = None if generalized else torch.zeros(n, 1, 3, 2, 2)
    loss = PaCoLossModule(counts, _section(), generalized)
    object.__setattr__(loss, "network", _Net(ViewsOutput(logits, emb, rest)))
    if not generalized:
        loss.key_encoder = _Keys(k)
    queue = FeatureQueue(4, p, torch.device("cpu"))
    queue.push(unit(2, p, gen).float(), torch.tensor([1, 0]))
    queue.commit()
    loss.queue = queue
    value = loss(logits[:, 0], y)
    prior = np.log(np.array(counts) / sum(counts))
    qq, yq = queue.contents()
    contrast = np.concatenate([q.numpy(), k.numpy(), qq.numpy()]).astype(np.float64)
    labels = y.tolist() * 2 + yq.tolist()
    if generalized:
        anchors, alabels = np.concatenate([q.numpy(), k.numpy()]), y.tolist() * 2
        centre = np.concatenate([logits[:, 0].numpy(), logits[:, 1].numpy()]) + prior
    else:
        anchors, alabels, centre = q.numpy(), y.tolist(), logits[:, 0].numpy() + prior
    ref = paco_reference(
        anchors.astype(np.float64),
        alabels,
        contrast,
        labels,
        list(range(len(alabels))),
        centre.astype(np.float64),
        0.1,
        1.0,
        1.0,
        0.2,
        1.0,
    )
    assert float(value) == pytest.approx(ref, rel=1e-5)
    assert queue.filled == 2  # not yet: keys wait for the step's end
    queue.commit()
    assert queue.filled == 4 and torch.equal(queue.contents()[1][2:], y[:2])


def test_queue_is_a_ring_of_the_last_keys_in_order_and_round_trips() -> None:
    queue = FeatureQueue(5, 2, torch.device("cpu"))
    for step in range(3):  # 3 steps of 2 micro-batches of 1 and 2 keys
        for size in (1, 2):
            keys = torch.full((size, 2), float(10 * step + size))
            queue.push(keys, torch.full((size,), step))
        queue.commit()
    feats, labels = queue.contents()
    assert queue.filled == 5 and queue.ptr == 4
    # 9 keys went in (1, 2, 2 | 11, 12, 12 | 21, 22, 22); the ring holds the last 5, each
    # step's keys written in order from where the last step stopped.
    assert feats[:, 0].tolist() == [12.0, 21.0, 22.0, 22.0, 12.0]
    assert labels.tolist() == [1, 2, 2, 2, 1]
    other = FeatureQueue(5, 2, torch.device("cpu"))
    other.load(queue.state_tensors("q."), "q.")
    assert torch.equal(other.features, queue.features) and (other.ptr, other.filled) == (4, 5)


# --- BCL ---------------------------------------------------------------------------------------


def test_bcl_class_averaged_term_value_and_gradient_equal_the_equation() -> None:
    gen = torch.Generator().manual_seed(1)
    n, c, p = 5, 3, 4
    feats = F.normalize(torch.randn(n, 2, p, generator=gen, dtype=torch.float64), dim=2)
    protos = unit(c, p, gen)
    labels = torch.tensor([0, 0, 1, 0, 2])  # class 0 three times, 1 and 2 once
    xs = [feats.clone().requires_grad_(True), protos.clone().requires_grad_(True)]
    value = bcl_loss(xs[0], labels, xs[1], 0.1)
    value.backward()

    def ref(arrays: list[np.ndarray]) -> float:
        return bcl_reference(arrays[0], labels.tolist(), arrays[1], 0.1)

    arrays = [feats.numpy().copy(), protos.numpy().copy()]
    assert value.item() == pytest.approx(ref(arrays), rel=1e-12)
    for x, g in zip(xs, finite_differences(ref, arrays)):
        np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-6, atol=1e-8)


def test_bcl_module_is_logit_adjusted_ce_plus_weighted_contrast() -> None:
    """α CE(z_view0 + τ log π) + β L_BCL(views 1, 2 and the prototypes)."""
    gen = torch.Generator().manual_seed(2)
    counts = [5, 2, 1]
    n, c, p = 4, 3, 4
    logits = torch.randn(n, 3, c, generator=gen)
    emb = F.normalize(torch.randn(n, 3, p, generator=gen), dim=2)
    protos = unit(c, p, gen).float()
    y = torch.tensor([0, 1, 0, 2])
    section = SimpleNamespace(ce_weight=0.5, contrast_weight=0.35, temperature=0.07, tau=1.0)
    loss = BCLLossModule(counts, section)
    object.__setattr__(loss, "network", _Net(ViewsOutput(logits, emb, None, protos)))
    value = float(loss(logits[:, 0], y))
    z = logits[:, 0].double().numpy() + np.log(np.array(counts) / sum(counts))
    ce = float(np.mean([-(z[i, y[i]] - np.log(np.exp(z[i]).sum())) for i in range(n)]))
    contrast = bcl_reference(emb[:, 1:].double().numpy(), y.tolist(), protos.double().numpy(), 0.07)
    assert value == pytest.approx(0.5 * ce + 0.35 * contrast, rel=1e-5)
