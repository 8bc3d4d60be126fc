"""Samplers: class frequencies against their definitions (binomial bounds), the reference
class-aware structure, rank shards of one stream, exact resume, and both pipelines."""

from __future__ import annotations

import math

import pytest
import torch

from lwrcli.data.device_loader import DeviceImageLoader
from lwrcli.data.image_loader import TrainSampler
from lwrcli.data.samplers import SAMPLERS, class_probabilities, epoch_indices

COUNTS = [200, 90, 40, 17, 8, 3, 1]  # a long tail with a single-image class


def _labels(counts: list[int] = COUNTS) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def _frequencies(kind: str, epochs: int, progress: float = 0.0, k: int = 4) -> torch.Tensor:
    labels = _labels()
    g = torch.Generator().manual_seed(1)
    draws = torch.cat([epoch_indices(kind, labels, g, progress, k) for _ in range(epochs)])
    return torch.bincount(labels[draws], minlength=len(COUNTS)).double()


def _within_binomial(counts: torch.Tensor, probs: list[float], sigmas: float = 5.0) -> None:
    """Each class count within `sigmas` standard deviations of Binomial(total, p_c)."""
    total = float(counts.sum())
    for c, p in enumerate(probs):
        sd = math.sqrt(total * p * (1 - p))
        assert abs(float(counts[c]) - total * p) <= sigmas * sd + 1, (c, float(counts[c]), p)


def test_class_balanced_frequencies_are_uniform_within_the_binomial_bound() -> None:
    counts = _frequencies("class_balanced", epochs=100)
    _within_binomial(counts, [1 / len(COUNTS)] * len(COUNTS))
    # The single-image class is drawn ~N/C times per epoch, not once (what balancing means).
    assert counts[-1] > 40 * 100


def test_square_root_matches_its_probabilities() -> None:
    counts = _frequencies("square_root", epochs=100)
    roots = [n**0.5 for n in COUNTS]
    _within_binomial(counts, [r / sum(roots) for r in roots])


@pytest.mark.parametrize(("t", "uniform"), [(0.0, False), (1.0, True), (0.5, None)])
def test_progressive_runs_from_instance_to_class_balanced(t: float, uniform: bool | None) -> None:
    counts = _frequencies("progressive", epochs=100, progress=t)
    n, c = sum(COUNTS), len(COUNTS)
    expected = [(1 - t) * k / n + t / c for k in COUNTS]
    if uniform is True:
        assert expected == pytest.approx([1 / c] * c)
    if uniform is False:
        assert expected == pytest.approx([k / n for k in COUNTS])
    _within_binomial(counts, expected)


def test_class_probabilities_agree_with_the_definitions() -> None:
    n = torch.tensor([9.0, 4.0, 1.0])
    assert class_probabilities("square_root", n).tolist() == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert class_probabilities("progressive", n, 0.5).tolist() == pytest.approx(
        [0.5 * 9 / 14 + 1 / 6, 0.5 * 4 / 14 + 1 / 6, 0.5 / 14 + 1 / 6]
    )
    with pytest.raises(ValueError, match="unknown sampler"):
        class_probabilities("bogus", n)


def test_class_aware_rounds_and_runs_follow_the_reference() -> None:
    """Picks come in runs of k images of one class; every C consecutive picks (a round) visit
    each class once; a class's images are cycled through a shuffle before any repeats."""
    labels = _labels()
    k, c = 3, len(COUNTS)
    idx = epoch_indices("class_balanced", labels, torch.Generator().manual_seed(0), 0.0, k)
    assert idx.shape == (len(labels),) and idx.dtype == torch.int64
    cls = labels[idx]
    picks = len(idx) // k
    runs = cls[: picks * k].view(picks, k)
    assert bool((runs == runs[:, :1]).all())
    for r in range(picks // c):
        assert sorted(runs[r * c : (r + 1) * c, 0].tolist()) == list(range(c))
    # Class 0 has 200 images and is drawn < 200 times in one epoch: no image twice.
    drawn0 = idx[cls == 0]
    assert len(drawn0) < 200 and len(set(drawn0.tolist())) == len(drawn0)
    # Class 3 (17 images) is drawn more often: each block of 17 is a permutation of it.
    drawn3 = idx[cls == 3].tolist()
    members = set(torch.nonzero(labels == 3).flatten().tolist())
    for start in range(0, len(drawn3) - 16, 17):
        assert set(drawn3[start : start + 17]) == members


@pytest.mark.parametrize("kind", SAMPLERS)
def test_every_kind_returns_n_valid_indices_and_instance_is_a_randperm(kind: str) -> None:
    labels = _labels()
    idx = epoch_indices(kind, labels, torch.Generator().manual_seed(3), 0.3)
    assert idx.shape == labels.shape and int(idx.min()) >= 0 and int(idx.max()) < len(labels)
    if kind == "instance":
        ref = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
        assert torch.equal(idx, ref)


def _device_loader(
    kind: str, rank: int, world: int, labels: torch.Tensor, global_batch: int = 8
) -> DeviceImageLoader:
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    return DeviceImageLoader(
        images, labels, global_batch // world, (0.5,) * 3, (0.25,) * 3, True, 0, False, seed=7,
        rank=rank, world_size=world, sampler=kind, epochs=10,
    )  # fmt: skip


def _batches(loader: DeviceImageLoader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [b.tolist() for b in loader.batch_indices()]


def _epoch(loader: DeviceImageLoader, epoch: int) -> list[int]:
    return [i for b in _batches(loader, epoch) for i in b]


def _sampled(kind: str, labels: torch.Tensor, epoch: int, rank: int, world: int) -> list[int]:
    s = TrainSampler(len(labels), 5, 8 // world, rank, world, labels, kind, 4, epochs=10)
    s.set_epoch(epoch)
    return [i for i, _ in s]


@pytest.mark.parametrize("kind", SAMPLERS)
def test_ranks_take_disjoint_positions_of_one_stream_and_cover_it(kind: str) -> None:
    """world_size 2, global batch 8: at every step the two processes' batches are the two
    halves of the one-process batch, for the device loader and the worker pipeline's
    TrainSampler (which drops the last partial global batch)."""
    labels = _labels()
    for epoch in (0, 4):
        full = _batches(_device_loader(kind, 0, 1, labels), epoch)
        parts = [_batches(_device_loader(kind, r, 2, labels), epoch) for r in (0, 1)]
        assert len(parts[0]) == len(parts[1]) == len(full)
        for k, batch in enumerate(full):
            assert parts[0][k] + parts[1][k] == batch

        one = _sampled(kind, labels, epoch, 0, 1)
        halves = [_sampled(kind, labels, epoch, r, 2) for r in (0, 1)]
        steps = len(one) // 8
        assert len(one) == steps * 8 == len(halves[0]) * 2
        for k in range(steps):
            got = halves[0][4 * k : 4 * k + 4] + halves[1][4 * k : 4 * k + 4]
            assert got == one[8 * k : 8 * k + 8]


def test_progressive_device_loader_moves_toward_balance_over_epochs() -> None:
    labels = _labels()
    loader = _device_loader("progressive", 0, 1, labels)
    first = torch.bincount(labels[_epoch(loader, 0)], minlength=len(COUNTS))
    last = torch.bincount(labels[_epoch(loader, 10)], minlength=len(COUNTS))
    assert int(first[0]) > 150 and int(last[0]) < 80  # head class: n/N -> 1/C of 359 draws


def test_class_balanced_loader_resumes_mid_epoch_exactly() -> None:
    labels = _labels()
    a = _device_loader("class_balanced", 0, 1, labels)
    a.set_epoch(3)
    it = a.batch_indices()
    head = [next(it) for _ in range(5)]
    state = a.state_dict()
    rest = list(it)
    b = _device_loader("class_balanced", 0, 1, labels)
    b.load_state_dict(state)
    b.set_epoch(3)
    assert b.position == 5
    assert all(torch.equal(x, y) for x, y in zip(list(b.batch_indices()), rest, strict=True))
    assert len(head) + len(rest) == len(b)
