"""Large-image input pipeline: split lists -> DataLoader workers -> normalised device batches.

Workers read and decode files and run the uint8 training transforms (RandomResizedCrop +
flip + ColorJitter) or the evaluation ones (Resize + CenterCrop); batches leave them as uint8
and `to_device`, which the engine calls on every batch, normalises on the device. Training with
`views=V > 1` (the contrastive losses) gives each image V independently transformed views,
batches (B, V, 3, S, S). With
`data.gpu_decode` on CUDA the workers only read file bytes and nvjpeg decodes the batch on the
GPU (lwrcli.data.decode), where the transforms then run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from lwrcli.config import DataConfig
from lwrcli.data.decode import ImageDecodeError, decode_rgb, decode_rgb_batch, read_bytes
from lwrcli.data.manifest import Manifest
from lwrcli.data.samplers import epoch_indices
from lwrcli.data.transforms import Views, eval_transform, normalize, train_transform, tte_transform
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

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Any, ...]:
        """`i` (evaluation) or `(i, sample_seed)` (training: the augmentation of item i in an
        epoch depends on that seed alone, not on which worker or process draws it)."""
        i, sample_seed = item if isinstance(item, tuple) else (item, None)
        path = self.root / self.paths[i]
        try:
            data = read_bytes(path)
            if self.raw:
                return data, int(self.labels[i]), sample_seed
            image = decode_rgb(data)
        except (ImageDecodeError, OSError) as exc:
            raise UserError(f"Cannot read image {path}: {exc}") from None
        return seeded(self.transform, image, sample_seed), int(self.labels[i])


def seeded(transform: Any, image: torch.Tensor, sample_seed: int | None) -> torch.Tensor:
    """transform(image) with torch's RNG seeded by `sample_seed` (the v2 transforms draw from
    it). Inside a DataLoader worker the worker's RNG is simply reseeded; in the main process
    it is forked, so the training process's own random stream is untouched."""
    if sample_seed is None:
        return transform(image)
    if get_worker_info() is not None:
        torch.manual_seed(sample_seed)
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed)
        return transform(image)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, position in the epoch's order)."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + position) % (1 << 63)


class TrainSampler(Sampler[tuple[int, int]]):
    """Training order for an epoch (seed + epoch, the same on every process): a permutation,
    or the draws of a class-aware sampler (`kind`, which needs the labels (N,)). It is walked
    in global batches of batch_size x world_size, of which each process takes its contiguous
    part; the last partial global batch is dropped. So 1 or W processes see the same images at
    the same step. Yields (index, sample_seed), the seed from the position in the epoch (an
    image drawn twice is augmented twice). `start` skips this process's first items: a
    resumed epoch continues where the checkpoint left it."""

    def __init__(
        self,
        n: int,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        labels: torch.Tensor | None = None,
        kind: str = "instance",
        num_samples_cls: int = 4,
        epochs: int = 1,
    ) -> None:
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.labels, self.kind = labels, kind
        self.num_samples_cls, self.epochs = num_samples_cls, epochs
        self.epoch = 0
        self.start = 0

    @property
    def steps(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return self.steps * self.batch_size - self.start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.kind == "instance":
            perm = torch.randperm(self.n, generator=g)
        else:
            assert self.labels is not None, "a class-aware order needs the labels"
            t = min(self.epoch / self.epochs, 1.0)
            perm = epoch_indices(self.kind, self.labels, g, t, self.num_samples_cls)
        b, gb = self.batch_size, self.batch_size * self.world_size
        positions = torch.arange(self.steps * gb).view(self.steps, self.world_size, b)
        mine = positions[:, self.rank, :].reshape(-1)[self.start :].tolist()
        order = perm.tolist()
        return iter((order[p], sample_seed(self.seed, self.epoch, p)) for p in mine)
        return iter((i, sample_seed(self.seed, self.epoch, i)) for i in mine)


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
    seeds: list[int | None]

    def pin_memory(self) -> RawBatch:
        return self


class Collate:
    """Stack a list of (image, label) items into an ImageBatch (or RawBatch of bytes); a
    class, not a closure, so spawn-started workers can pickle it."""

    def __init__(self, cfg: DataConfig, raw_transform: Any = None) -> None:
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32)
        self.std = torch.tensor(cfg.std, dtype=torch.float32)
        self.raw_transform = raw_transform

    def __call__(self, items: list[tuple[Any, ...]]) -> ImageBatch | RawBatch:
        labels = torch.tensor([item[1] for item in items], dtype=torch.int64)
        if self.raw_transform is not None:
            data = [item[0] for item in items]
            seeds = [item[2] for item in items]
            return RawBatch(data, labels, self.raw_transform, self.mean, self.std, seeds)
        return ImageBatch(torch.stack([item[0] for item in items]), labels, self.mean, self.std)


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 (B, 3, S, S) normalised, labels int64 (B,)) on `device`."""
    if isinstance(batch, RawBatch):
        images = decode_rgb_batch(batch.data, device)
        x = torch.stack(
            [seeded(batch.transform, im, sd) for im, sd in zip(images, batch.seeds, strict=True)]
        )
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


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. under a scheduler)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


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
    epochs: int = 1,
    tte: bool = False,
    sampler: str | None = None,
    views: int = 1,
) -> DataLoader:
    """A DataLoader of ImageBatch (or RawBatch with gpu_decode) for one split of a `lists`
    dataset; pass each batch through `to_device`. Training shuffles with seed + epoch (call
    `sampler.set_epoch`), seeds each image's augmentation by (seed, epoch, index), pads the
    shards so all ranks take as many steps, and drops the last partial batch unless
    `drop_last=False`. Workers never exceed the cores this process may use. `tte` (evaluation
    only): each item is LIFT's five crops, batches (B, 5, 3, S, S). `sampler` replaces
    `data_cfg.sampler` (BBN's reversed branch). `views` > 1 (training only): each item is
    that many independently augmented views, batches (B, V, 3, S, S)."""
    device = device or torch.device("cpu")
    if manifest.image_root is None:
        raise UserError(f"{data_dir}/manifest.json has no image_root; prepare it again.")
    if split not in manifest.splits:
        raise UserError(f"Dataset {data_dir} has no '{split}' split.")
    paths, labels = read_split_list(data_dir, split)
    if train:
        transform = train_transform(data_cfg)
        if views > 1:
            transform = Views(transform, views)
    else:
        transform = tte_transform(data_cfg) if tte else eval_transform(data_cfg)
    gpu_decode = data_cfg.gpu_decode and device.type == "cuda"
    dataset = ListDataset(Path(manifest.image_root), paths, labels, transform, raw=gpu_decode)
    order: Sampler[Any]
    if train:
        order = TrainSampler(
            len(dataset),
            seed,
            batch_size,
            rank,
            world_size,
            labels,
            sampler or data_cfg.sampler,
            data_cfg.num_samples_cls,
            epochs,
        )
    else:
        order = ShardSampler(len(dataset), rank, world_size)
    workers = min(data_cfg.num_workers, available_cores())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=workers,
        collate_fn=Collate(data_cfg, transform if gpu_decode else None),
        pin_memory=device.type == "cuda" and not gpu_decode,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        drop_last=train if drop_last is None else drop_last,
        # Augmentation is seeded per sample (TrainSampler); this only fixes the workers' base.
        generator=torch.Generator().manual_seed(seed * 1009 + rank),
    )
