"""Soft training targets: mixup / CutMix on each batch, uniform and label-aware smoothing.

`BatchMixer` turns a training batch (x (N, 3, H, W), y (N,) class ids) into (x mixed, targets
(N, C) float32 probabilities) for the losses that take soft targets (CE, BS, LA). The engine
calls it on every batch of either pipeline (device-resident arrays or the image DataLoader),
after the batch reached the device.

Mixing uses torchvision's `v2.MixUp` / `v2.CutMix` (and `v2.RandomChoice` between them), which
draw from torch's global RNG. Each batch's draws run under `torch.random.fork_rng`, seeded from
(run seed, epoch, step in the epoch, process rank) alone: the same batch position always gets
the same mix, whatever ran before it, so a run resumed mid-epoch replays it exactly and the
training RNG streams are untouched. Under torchrun each process mixes its own part of the
global batch (pairs never cross processes; rank is in the seed so the parts differ).

torchvision pairs each sample with its neighbour (`roll(1)`); the batch is first put in a
seeded random order, so the pairs are random even when the sampler groups a class's images
together (class-balanced sampling takes `num_samples_cls` of a class in a row).

Label smoothing (Szegedy et al.) and MiSLAS's label-aware smoothing (Zhong et al., CVPR 2021,
github.com/dvlab-research/MiSLAS, `LabelAwareSmoothing`): target (1 - ε_y) e_y + ε_y / C,
which with CE is MiSLAS's (1 - ε_y) NLL + ε_y mean_c(-log p_c). Smoothing is linear in the
target, so a mixed target q becomes Σ_c q_c [(1 - ε_c) e_c + ε_c / C].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from lwrcli.config.schema import LossConfig, TrainConfig
from lwrcli.errors import UserError


def label_aware_epsilon(
    class_counts: Sequence[int] | Tensor, head: float, tail: float, shape: str, power: float = 1.0
) -> Tensor:
    """MiSLAS's ε_c (C,) float64: `tail` for the rarest class (n_K) up to `head` for the most
    frequent (n_1), along f(x), x = (n_c - n_K) / (n_1 - n_K):
    concave ε = tail + (head - tail) sin(π x / 2); linear ε = tail + (head - tail) x;
    convex ε = head + (head - tail) sin(3π/2 + π x / 2); exp ε = tail + (head - tail) x^power.
    Equal counts (no head, no tail) give `head` for every class."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    n1, nk = n.max(), n.min()
    if n1 == nk:
        return torch.full_like(n, head)
    x = (n - nk) / (n1 - nk)
    if shape == "concave":
        return tail + (head - tail) * torch.sin(x * math.pi / 2)
    if shape == "linear":
        return tail + (head - tail) * x
    if shape == "convex":
        return head + (head - tail) * torch.sin(1.5 * math.pi + x * math.pi / 2)
    if shape == "exp":
        return tail + (head - tail) * x.pow(power)
    raise ValueError(f"unknown label smoothing shape {shape!r}")


def smoothing_epsilon(cfg: LossConfig, class_counts: Sequence[int] | Tensor) -> Tensor | None:
    """ε per class (C,) float64 from the loss config, or None when smoothing is off."""
    if not cfg.smoothing:
        return None
    c = len(class_counts)
    if cfg.label_smoothing_tail is None:
        return torch.full((c,), cfg.label_smoothing, dtype=torch.float64)
    return label_aware_epsilon(
        class_counts,
        cfg.label_smoothing,
        cfg.label_smoothing_tail,
        cfg.label_smoothing_shape,
        cfg.label_smoothing_power,
    )


def smooth(target: Tensor, epsilon: Tensor) -> Tensor:
    """Soft targets (N, C) -> Σ_c q_c [(1 - ε_c) e_c + ε_c / C]; epsilon (C,) on their device."""
    eps = epsilon.to(target.dtype)
    return target * (1.0 - eps) + (target @ eps)[:, None] / target.shape[1]


def mixing_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, step in the epoch, process rank)."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + step) * 1_009 + rank) % (1 << 63)


class BatchMixer:
    """(x (N, 3, H, W) float, y (N,) int64, epoch, step) -> (x, targets (N, C) float32)."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        epsilon: Tensor | None = None,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        self.num_classes = num_classes
        self.mix_prob = mix_prob
        self.seed, self.rank = seed, rank
        self.epsilon = epsilon
        ways: list[v2.Transform] = []
        if mix_prob <= 0:
            pass  # never mixed: only the targets change (smoothing)
        elif cutmix_alpha > 0:
            ways.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if mixup_alpha > 0 and mix_prob > 0:
            ways.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        self.transform: v2.Transform | None = None
        if len(ways) == 2:
            self.transform = v2.RandomChoice(ways, p=[switch_prob, 1.0 - switch_prob])
        elif ways:
            self.transform = ways[0]

    @property
    def mixes(self) -> bool:
        return self.transform is not None

    def __call__(self, x: Tensor, y: Tensor, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        if self.transform is not None:
            x, target = self._mix(x, y, mixing_seed(self.seed, epoch, step, self.rank))
        elif y.dim() == 1:
            target = F.one_hot(y, self.num_classes).float()
        else:
            target = y.float()
        if self.epsilon is not None:
            if self.epsilon.device != target.device:
                self.epsilon = self.epsilon.to(target.device)
            target = smooth(target, self.epsilon)
        return x, target

    def _mix(self, x: Tensor, y: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        assert self.transform is not None
        devices = [x.device] if x.device.type == "cuda" else []
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            # Seeded per batch: what one batch draws never shifts another batch's mix.
            mixed = bool(torch.rand(()) < self.mix_prob)
            order = torch.randperm(y.shape[0]).to(x.device)
            x, y = x[order], y[order]
            if mixed:
                x, target = self.transform(x, y)
            else:
                target = F.one_hot(y, self.num_classes).float() if y.dim() == 1 else y.float()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, target


def build_mixer(cfg: TrainConfig, class_counts: Sequence[int], rank: int = 0) -> BatchMixer | None:
    """The run's target transform, or None when neither mixing nor smoothing is on."""
    data = cfg.data
    epsilon = smoothing_epsilon(cfg.loss, class_counts)
    if not data.mixing and epsilon is None:
        return None
    if epsilon is not None and bool((epsilon > 1.0).any() or (epsilon < 0.0).any()):
        raise UserError(
            f"Label smoothing gives some class an ε outside [0, 1] (shape "
            f"{cfg.loss.label_smoothing_shape}, head {cfg.loss.label_smoothing}, tail "
            f"{cfg.loss.label_smoothing_tail}); choose head and tail values in [0, 1)."
        )
    return BatchMixer(
        len(class_counts),
        data.mixup_alpha,
        data.cutmix_alpha,
        data.mix_prob,
        data.mix_switch_prob,
        epsilon,
        cfg.seed,
        rank,
    )
