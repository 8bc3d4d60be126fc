"""Stage 2 on cached features: the frozen backbone runs once over every split, and the
unchanged Trainer then trains and evaluates the head alone on those features.

Exact with respect to the image path when augmentation is off (the config refuses
otherwise): the training order comes from the image loader's own `batch_indices`, which draws
from the same generator, so a cached run visits the same batches in the same order and
saves the same resume state; only the backbone's forward passes are skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from lwrcli.data.device_loader import DeviceImageLoader
from lwrcli.errors import UserError
from lwrcli.models.features import head_inputs
from lwrcli.models.heads import get_classifier


class FeatureBatches:
    """Evaluation batches of cached features (the split's own order and sharding)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)


class CachedFeatureLoader:
    """The training loader over features (N, d): order, position and resume state are the
    image loader's; each batch indexes the features instead of loading images."""

    def __init__(self, base: DeviceImageLoader, features: torch.Tensor) -> None:
        self.base, self.features = base, features

    def __len__(self) -> int:
        return len(self.base)

    @property
    def position(self) -> int:
        return self.base.position

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.base.batch_indices():
            yield self.features[idx], self.base.labels[idx]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.base.load_state_dict(state)


def _in_order(loader: DeviceImageLoader, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Every training image once, in index order, normalised without augmentation."""
    for start in range(0, len(loader.labels), batch_size):
        end = start + batch_size
        yield loader.normalize(loader.images[start:end]), loader.labels[start:end]


def use_cached_features(parts: Any, cfg: Any, device: torch.device) -> Any:
    """Components whose model is the head alone and whose loaders yield cached features."""
    base = parts.data.train
    if not isinstance(base, DeviceImageLoader):
        raise UserError(
            "stage2.cache_features works on array datasets (CIFAR, synthetic); list datasets "
            "always augment (RandomResizedCrop). Set stage2.cache_features=false: the frozen "
            "backbone then runs without gradients."
        )
    if base.world_size > 1 or parts.model is not parts.raw_model:
        raise UserError(
            "stage2.cache_features runs in one process without torch.compile (training the "
            "head on cached features takes seconds); start it without torchrun, compile=false."
        )
    train = head_inputs(parts.raw_model, _in_order(base, cfg.eval_batch_size), cfg.amp)
    features = torch.cat([f for f, _ in train])
    evals = {
        split: FeatureBatches(head_inputs(parts.raw_model, loader, cfg.amp))
        for split, loader in parts.data.evals.items()
    }
    data = dataclasses.replace(parts.data, train=CachedFeatureLoader(base, features), evals=evals)
    return dataclasses.replace(parts, model=get_classifier(parts.raw_model), data=data)
