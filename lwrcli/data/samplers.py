"""Training orders for long-tailed data: which image indices an epoch visits.

Pure functions of (labels, generator, progress), shared by both pipelines: the device loader
draws on the training device from its own generator, the worker pipeline's TrainSampler from a
CPU generator seeded by seed + epoch. Every kind returns N indices (N = the train-set size),
so an epoch has the same number of steps whatever the sampler; the loaders shard the result
over ranks exactly as they shard the instance permutation.

- instance: a permutation (every image once).
- class_balanced: the reference class-aware sampler (Kang et al. 2020, ClassAwareSampler):
  classes are visited in shuffled rounds (every class once per round, so each is picked with
  probability 1/C), and each pick takes `num_samples_cls` consecutive images from that class's
  own shuffled list, cycled (reshuffled when exhausted).
- square_root: class c with probability proportional to sqrt(n_c), then a uniform image of it.
- progressive: p_c(t) = (1 - t) n_c / N + t / C, instance-balanced at t = 0 to
  class-balanced at t = 1 (t = epoch / epochs), then a uniform image of the class.
- reversed (BBN's re-balancing branch, lwrcli.data.paired; not a `data.sampler` choice):
  class c with probability (1 / n_c) / sum_j (1 / n_j), then a uniform image of it.
"""

from __future__ import annotations

from typing import Literal

import torch

SamplerKind = Literal["instance", "class_balanced", "square_root", "progressive"]
SAMPLERS: tuple[str, ...] = ("instance", "class_balanced", "square_root", "progressive")


def class_probabilities(kind: str, counts: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
    """Probability (C,) float64 that one draw of `kind` is of class c, from counts n_c (C,)."""
    n = counts.to(torch.float64)
    c = n.numel()
    if kind == "instance":
        return n / n.sum()
    if kind == "class_balanced":
        return torch.full_like(n, 1.0 / c)
    if kind == "square_root":
        return n.sqrt() / n.sqrt().sum()
    if kind == "progressive":
        t = min(max(progress, 0.0), 1.0)
        return (1.0 - t) * n / n.sum() + t / c
    if kind == "reversed":  # empty classes get 0 (never drawn), not 1/0
        inv = torch.where(n > 0, 1.0 / n.clamp_min(1.0), torch.zeros_like(n))
        return inv / inv.sum()
    raise ValueError(f"unknown sampler '{kind}'; choose one of {', '.join(SAMPLERS)}")


def _by_class(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices grouped by class (N,), start of each class's group (C,))."""
    grouped = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return grouped, starts


def _occurrence(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """For each position j, how many earlier positions hold the same value (0, 1, 2, ...)."""
    order = torch.argsort(values, stable=True)
    counts = torch.bincount(values, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(values)
    rank[order] = torch.arange(len(values), device=values.device) - starts[values[order]]
    return rank


def _class_draws(
    probs: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """n i.i.d. draws: class c with probability probs[c], then a uniform image of class c."""
    dev = labels.device
    c = probs.numel()
    counts = torch.bincount(labels, minlength=c)
    probs = torch.where(counts > 0, probs, torch.zeros_like(probs))  # never an empty class
    cls = torch.multinomial(probs.to(dev, torch.float64), n, replacement=True, generator=generator)
    grouped, starts = _by_class(labels, c)
    u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    pos = (u * counts[cls]).long().clamp_max(counts[cls] - 1)
    return grouped[starts[cls] + pos]


def _class_aware(
    labels: torch.Tensor, n: int, num_samples_cls: int, generator: torch.Generator
) -> torch.Tensor:
    """The reference class-aware order, vectorised: rounds of shuffled classes; the m-th pick
    of class c takes items [m k, (m+1) k) of c's stream, a chain of shuffles of its images."""
    dev = labels.device
    counts = torch.bincount(labels)
    present = torch.nonzero(counts > 0).flatten()
    c = len(present)
    k = num_samples_cls
    picks = -(-n // k)
    rounds = -(-picks // c)
    keys = torch.rand(rounds, c, generator=generator, device=dev)
    cls = present[torch.argsort(keys, dim=1).flatten()[:picks]]  # (picks,)
    # Items needed from each class's stream, and how many shuffles of the class that takes.
    num = len(counts)
    used = torch.bincount(cls, minlength=num) * k
    cycles = torch.where(counts > 0, -(-used // counts.clamp_min(1)), torch.zeros_like(used))
    grouped, _ = _by_class(labels, num)
    # Each image of class c appears cycles_c times; order by (class, cycle, random key).
    reps = cycles[labels[grouped]]
    items = grouped.repeat_interleave(reps)
    item_cls = labels[items]
    cycle = _occurrence(items, len(labels))  # which copy of the image: the shuffle it is in
    noise = torch.rand(len(items), generator=generator, device=dev, dtype=torch.float64)
    max_cycle = int(cycles.max()) + 1
    order = torch.argsort((item_cls * max_cycle + cycle).to(torch.float64) + noise)
    stream = items[order]
    stream_start = torch.cumsum(cycles * counts, 0) - cycles * counts
    m = _occurrence(cls, num)  # the m-th pick of its class
    offsets = (m * k)[:, None] + torch.arange(k, device=dev)[None, :]  # (picks, k)
    return stream[(stream_start[cls][:, None] + offsets).flatten()[:n]]


def epoch_indices(
    kind: str,
    labels: torch.Tensor,
    generator: torch.Generator,
    progress: float,
    num_samples_cls: int = 4,
) -> torch.Tensor:
    """One epoch's training order: (N,) int64 image indices on `labels`' device.

    labels (N,) int64 in [0, C); generator on that device; progress = epoch / epochs in [0, 1]
    (only `progressive` uses it). `instance` is exactly `torch.randperm(N, generator)`."""
    n = len(labels)
    if kind == "instance":
        return torch.randperm(n, device=labels.device, generator=generator)
    if kind == "class_balanced":
        return _class_aware(labels, n, num_samples_cls, generator)
    counts = torch.bincount(labels).to(torch.float64)
    return _class_draws(class_probabilities(kind, counts, progress), labels, n, generator)
