"""From a prepared dataset folder to the loaders training and evaluation use.

`arrays` datasets (CIFAR, synthetic) become device-resident loaders; `lists` datasets
(ImageNet-LT, Places-LT, iNaturalist, folders) become worker DataLoaders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lwrcli.config import TrainConfig
from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.distributed import DistInfo
from lwrcli.errors import UserError


class BatchLoader(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


class _ListLoader:
    """Wraps a DataLoader of a `lists` dataset so batches arrive on the device."""

    def __init__(self, loader: Any, device: torch.device, channels_last: bool) -> None:
        self.loader = loader
        self.device = device
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from lwrcli.data.image_loader import to_device

        for batch in self.loader:
            x, y = to_device(batch, self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


@dataclass
class DataBundle:
    manifest: Manifest
    train: BatchLoader | None
    evals: dict[str, BatchLoader] = field(default_factory=dict)  # split name -> loader

    @property
    def class_counts(self) -> list[int]:
        return self.manifest.class_counts

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes


def check_dataset_matches(cfg: TrainConfig, manifest: Manifest, data_dir: Path) -> None:
    """A recipe written for one dataset refuses another, unless it says `dataset: any`."""
    if cfg.dataset in ("any", manifest.source):
        return
    raise UserError(
        f"Preset/config '{cfg.name}' is a recipe for dataset '{cfg.dataset}', but {data_dir} "
        f"holds '{manifest.source}' ({manifest.name}). Use a matching preset (lwr presets list) "
        "or pass --set dataset=any to train this recipe on it anyway."
    )


def eval_splits(manifest: Manifest) -> list[str]:
    """Splits evaluated during training: validation first (model selection), then test."""
    splits = []
    if manifest.val_split and manifest.val_split in manifest.splits:
        splits.append(manifest.val_split)
    if manifest.test_split in manifest.splits:
        splits.append(manifest.test_split)
    return splits


def build_data(
    data_dir: Path,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo | None = None,
    train: bool = True,
    splits: list[str] | None = None,
) -> DataBundle:
    dist = dist or DistInfo()
    manifest = read_manifest(data_dir)
    wanted = eval_splits(manifest) if splits is None else splits
    for split in wanted:
        if split not in manifest.splits:
            raise UserError(
                f"Dataset {data_dir} has no '{split}' split (it has {', '.join(manifest.splits)})."
            )
    make = _arrays_loader if manifest.storage == "arrays" else _list_loader
    data_dir = Path(data_dir)

    def loader(split: str, is_train: bool) -> BatchLoader:
        return make(data_dir, manifest, cfg, device, dist, split, is_train)

    train_loader = loader("train", True) if train else None
    return DataBundle(manifest, train_loader, {s: loader(s, False) for s in wanted})


def _arrays_loader(
    data_dir: Path,
    manifest: Manifest,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo,
    split: str,
    is_train: bool,
) -> BatchLoader:
    """Small images: the split's uint8 tensor moved to the device once."""
    from lwrcli.data.arrays import load_arrays
    from lwrcli.data.device_loader import DeviceImageLoader

    images, labels = load_arrays(data_dir, split)
    return DeviceImageLoader(
        images.to(device),
        labels.to(device),
        batch_size=cfg.batch_size if is_train else cfg.eval_batch_size,
        mean=cfg.data.mean,
        std=cfg.data.std,
        train=is_train,
        padding=cfg.data.crop_padding,
        flip=cfg.data.flip,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=cfg.channels_last is True,  # unresolved "auto" counts as off here
    )


def _list_loader(
    data_dir: Path,
    manifest: Manifest,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo,
    split: str,
    is_train: bool,
) -> BatchLoader:
    """Large images: a worker DataLoader whose batches are moved to the device."""
    from lwrcli.data.image_loader import build_image_loader

    dl = build_image_loader(
        data_dir,
        manifest,
        split,
        cfg.data,
        batch_size=cfg.batch_size if is_train else cfg.eval_batch_size,
        train=is_train,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
    )
    return _ListLoader(dl, device, cfg.channels_last is True)
