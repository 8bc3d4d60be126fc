"""mixup / CutMix on each training batch (section `mixing:`), both pipelines.

`BatchMixer` turns a training batch (x (N, 3, H, W), y (N,) class ids) into (x mixed, targets
(N, C) float32 probabilities) for the losses that take soft targets (CE, BS, LA, DR). The
engine calls it on every batch of either pipeline (device-resident arrays or the image DataLoader),
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
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from lwrcli.config.sections import Section
from lwrcli.methods.base import Method, RunParts
from lwrcli.methods.losses import soft_target_losses


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
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        # Imported here: torchvision (and its models) stay out of config validation.
        from torchvision.transforms import v2

        self.num_classes = num_classes
        self.mix_prob = mix_prob
        self.seed, self.rank = seed, rank
        ways: list[Any] = []
        if mix_prob <= 0:
            pass  # never mixed: the targets become one-hot probabilities
        elif cutmix_alpha > 0:
            ways.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if mixup_alpha > 0 and mix_prob > 0:
            ways.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        self.transform: Any = None
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


class MixingConfig(Section):
    """Batch-level mixing: alpha of the Beta(α, α) draw, 0 = off; a batch is mixed with
    probability `prob`, by CutMix with `switch_prob` when both are on."""

    mixup_alpha: float = Field(0.0, ge=0.0, le=100.0)
    cutmix_alpha: float = Field(0.0, ge=0.0, le=100.0)
    prob: float = Field(1.0, ge=0.0, le=1.0)
    switch_prob: float = Field(0.5, ge=0.0, le=1.0)

    @property
    def active(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


class MixingMethod(Method):
    name, slot, key, label, config = "mixing", "trick", "mixing", "mixup/CutMix", MixingConfig

    def active(self, section: Any) -> bool:
        return section.active

    def acting(self, section: dict[str, Any]) -> set[str]:
        on = self.active(self.config.model_validate(section))
        return set(section) if on else {"mixup_alpha", "cutmix_alpha"}

    def describe(self, section: Any) -> str:
        parts = [f"mixup α={section.mixup_alpha:g}"] if section.mixup_alpha > 0 else []
        parts += [f"CutMix α={section.cutmix_alpha:g}"] if section.cutmix_alpha > 0 else []
        return " + ".join(parts)

    def check(self, cfg: Any) -> None:
        if self.active(cfg.section("mixing")):
            require_soft_targets(cfg, "mixup/CutMix")

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        m = cfg.section("mixing")
        mixer = BatchMixer(
            parts.data.num_classes,
            m.mixup_alpha,
            m.cutmix_alpha,
            m.prob,
            m.switch_prob,
            cfg.seed,
            parts.rank,
        )
        parts.batch_transforms.append(mixer)


def require_soft_targets(cfg: Any, what: str) -> None:
    """Soft targets (class probabilities) need a loss that takes them."""
    able = soft_target_losses()
    if cfg.loss.name not in able:
        raise ValueError(
            f"{what} trains on soft targets (class probabilities), which loss.name="
            f"{cfg.loss.name} cannot take (it needs one true class per sample): use "
            f"loss.name={' / '.join(able)}, or turn {what} off"
        )


METHOD = MixingMethod()
