"""Large-image input pipeline: split lists -> DataLoader workers -> normalised device batches.

Workers read and decode files and run the uint8 training transforms (RandomResizedCrop +
flip + ColorJitter) or the evaluation ones (Resize + CenterCrop); batches leave them as uint8
and `to_device`, which the engine calls on every batch, normalises on the device. With
`data.gpu_decode` on CUDA the workers only read file bytes and nvjpeg decodes the batch on the
GPU, where the transforms then run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision.io import ImageReadMode, decode_jpeg

from lwrcli.config import DataConfig
from lwrcli.data.manifest import Manifest
from lwrcli.data.transforms import (
    decode_rgb,
    eval_transform,
    normalize,
    read_bytes,
    train_transform,
)
from lwrcli.errors import UserError

PREFETCH_FACTOR = 2  # batches in flight per worker; more only costs shared memory


def read_split_list(data_dir: Path, split: str) -> tuple[list[str], torch.Tensor]:
    """(relative paths, labels (N,) int64) of a prepared `{split}.txt`."""
    path = Path(data_dir) / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing: prepare the dataset again with 'lwr prepare-data'.")
    paths, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            rel, label = line.rsplit(maxsplit=1)
            paths.append(rel)
            labels.append(int(label))
    return paths, torch.tensor(labels, dtype=torch.int64)


class ListDataset(Dataset):
    """Images named by a list: item i is (uint8 (3, S, S) transformed image, label), or with
    `raw=True` (file bytes uint8 1-D, label) for decoding on the GPU."""

    def __init__(
        self, root: Path, paths: list[str], labels: torch.Tensor, transform: Any, raw: bool = False
    ) -> None:
        self.root, self.paths, self.labels = Path(root), paths, labels
        self.transform, self.raw = transform, raw

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.root / self.paths[i]
        try:
            data = read_bytes(path)
            if self.raw:
                return data, int(self.labels[i])
            image = decode_rgb(data)
        except (RuntimeError, OSError, ValueError) as exc:
            raise UserError(f"Cannot read image {path}: {exc}") from None
        return self.transform(image), int(self.labels[i])


@dataclass
class ImageBatch:
    """A batch as it leaves the workers: uint8 images (B, 3, S, S), labels (B,), and the
    normalisation `to_device` applies on the device."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def pin_memory(self) -> ImageBatch:
        return ImageBatch(self.images.pin_memory(), self.labels.pin_memory(), self.mean, self.std)


@dataclass
class RawBatch:
    """File bytes of a batch (B tensors uint8 1-D), decoded and transformed by `to_device`."""

    data: list[torch.Tensor]
    labels: torch.Tensor
    transform: Any
    mean: torch.Tensor
    std: torch.Tensor

    def pin_memory(self) -> RawBatch:
        return self


class Collate:
    """Stack a list of (image, label) items into an ImageBatch (or RawBatch of bytes); a
    class, not a closure, so spawn-started workers can pickle it."""

    def __init__(self, cfg: DataConfig, raw_transform: Any = None) -> None:
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32)
        self.std = torch.tensor(cfg.std, dtype=torch.float32)
        self.raw_transform = raw_transform

    def __call__(self, items: list[tuple[torch.Tensor, int]]) -> ImageBatch | RawBatch:
        labels = torch.tensor([y for _, y in items], dtype=torch.int64)
        if self.raw_transform is not None:
            data = [d for d, _ in items]
            return RawBatch(data, labels, self.raw_transform, self.mean, self.std)
        return ImageBatch(torch.stack([x for x, _ in items]), labels, self.mean, self.std)


def _decode_on_device(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvjpeg for the batch's JPEGs; anything else (PNG, CMYK JPEG nvjpeg refuses) on CPU."""
    is_jpeg = [len(d) > 2 and int(d[0]) == 0xFF and int(d[1]) == 0xD8 for d in data]
    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [i for i, j in enumerate(is_jpeg) if j]
    if jpegs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg(
                    [data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device
                )
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:
            pass  # the CPU fallback below decodes them one by one
    return [o if o is not None else decode_rgb(d).to(device) for o, d in zip(out, data)]


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (B, 3, S, S) normalised, labels int64 (B,)) on `device`."""
    if isinstance(batch, RawBatch):
        images = _decode_on_device(batch.data, device)
        x = torch.stack([batch.transform(image) for image in images])
        return normalize(x, batch.mean, batch.std), batch.labels.to(device, non_blocking=True)
    if isinstance(batch, ImageBatch):
        x = batch.images.to(device, non_blocking=True)
        return normalize(x, batch.mean, batch.std), batch.labels.to(device, non_blocking=True)
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class ShardSampler(Sampler[int]):
    """Evaluation order: every world_size-th item from `rank`, unpadded (the engine gathers
    ragged per-rank predictions, so no image is counted twice)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not depend on the epoch."""


def build_image_loader(
    data_dir: Path,
    manifest: Manifest,
    split: str,
    data_cfg: DataConfig,
    batch_size: int,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    drop_last: bool | None = None,
) -> DataLoader:
    """A DataLoader of ImageBatch (or RawBatch with gpu_decode) for one split of a `lists`
    dataset; pass each batch through `to_device`. Training shuffles with seed + epoch (call
    `set_epoch`), pads the shards so all ranks take as many steps, and drops the last
    partial batch unless `drop_last=False`."""
    device = device or torch.device("cpu")
    if manifest.image_root is None:
        raise UserError(f"{data_dir}/manifest.json has no image_root; prepare it again.")
    if split not in manifest.splits:
        raise UserError(f"Dataset {data_dir} has no '{split}' split.")
    paths, labels = read_split_list(data_dir, split)
    transform = train_transform(data_cfg) if train else eval_transform(data_cfg)
    gpu_decode = data_cfg.gpu_decode and device.type == "cuda"
    dataset = ListDataset(Path(manifest.image_root), paths, labels, transform, raw=gpu_decode)
    sampler: Sampler[int]
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    workers = data_cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=Collate(data_cfg, transform if gpu_decode else None),
        pin_memory=device.type == "cuda" and not gpu_decode,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        drop_last=train if drop_last is None else drop_last,
        # Worker augmentation streams derive from this: reproducible, and distinct per rank.
        generator=torch.Generator().manual_seed(seed * 1009 + rank),
    )
