"""The uint8 image transforms of the large-image pipeline.

Images come decoded by lwrcli.data.decode (TorchCodec, torchvision.io on older torch, PIL
for other formats: RGB always, EXIF orientation not applied, as the reference PIL
pipelines). Transforms work on uint8 (a quarter of float32's bytes through worker shared
memory and the host-to-device copy); `normalize` converts to float on the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from lwrcli.config import DataConfig

# Decoding lived here before lwrcli.data.decode; the names stay importable from here.
from lwrcli.data.decode import decode_rgb as decode_rgb
from lwrcli.data.decode import read_bytes as read_bytes


def train_transform(cfg: DataConfig) -> v2.Compose:
    """uint8 (3, H, W) -> uint8 (3, S, S), S = image_size: the ImageNet training recipe
    (RandomResizedCrop, flip, then `data.augment`'s policy as in torchvision's references,
    then colour jitter when asked)."""
    steps: list[Any] = [
        v2.RandomResizedCrop(cfg.image_size, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    policy = policy_transform(cfg)
    if policy is not None:
        steps.append(policy)
    if cfg.color_jitter > 0:
        cj = cfg.color_jitter
        steps.append(v2.ColorJitter(cj, cj, cj))
    return v2.Compose(steps)


def policy_transform(cfg: DataConfig) -> v2.Transform | None:
    """`data.augment` as a torchvision v2 transform on uint8 images (nearest interpolation,
    zero fill: torchvision's defaults); AutoAugment's `auto` policy is ImageNet's here."""
    if cfg.augment == "randaugment":
        return v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude)
    if cfg.augment == "trivialaugment":
        return v2.TrivialAugmentWide()
    if cfg.augment == "autoaugment":
        name = "imagenet" if cfg.autoaugment_policy == "auto" else cfg.autoaugment_policy
        return v2.AutoAugment(v2.AutoAugmentPolicy(name))
    return None


def eval_transform(cfg: DataConfig) -> v2.Compose:
    """uint8 (3, H, W) -> uint8 (3, S, S): shorter side to `resize`, centre crop S."""
    return v2.Compose([v2.Resize(cfg.resize, antialias=True), v2.CenterCrop(cfg.image_size)])


# LIFT's test-time ensemble: the shorter side resized to image_size + TTE_EXPAND, then the
# four corner crops and the centre crop of image_size (torchvision's FiveCrop; no flips).
TTE_EXPAND = 24  # pixels
TTE_CROPS = 5


class StackCrops:
    """A tuple of K uint8 (3, S, S) crops -> uint8 (K, 3, S, S) (a class, so spawn-started
    workers can pickle it)."""

    def __call__(self, crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack(list(crops))


def tte_transform(cfg: DataConfig) -> v2.Compose:
    """uint8 (3, H, W) -> uint8 (5, 3, S, S): LIFT's test-time ensemble (shorter side to
    S + 24, FiveCrop S). The model's predictions over the crops are averaged by evaluation."""
    return v2.Compose(
        [
            v2.Resize(cfg.image_size + TTE_EXPAND, antialias=True),
            v2.FiveCrop(cfg.image_size),
            StackCrops(),
        ]
    )


class Views:
    """`views` independent draws of a training transform, uint8 (3, H, W) -> (V, 3, S, S): the
    augmented views the contrastive losses compare (a class, so spawn-started workers can
    pickle it). Under one per-sample seed (image_loader.seeded) the draws follow each other,
    so the views differ from each other but an image's views depend on its seed alone."""

    def __init__(self, transform: Any, views: int) -> None:
        if views < 2:
            raise ValueError(f"Views needs at least 2 views, got {views}")
        self.transform, self.views = transform, views

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.views)])


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 (x / 255 - mean) / std, on the images' device (a
    test-time-ensemble batch (B, K, 3, H, W) broadcasts the same way)."""
    scale = (1.0 / (255.0 * std)).to(images.device, torch.float32).view(1, 3, 1, 1)
    shift = (mean / std).to(images.device, torch.float32).view(1, 3, 1, 1)
    return images.float().mul_(scale).sub_(shift)
