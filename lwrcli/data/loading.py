"""From a prepared dataset folder to the loaders training and evaluation use.

`arrays` datasets (CIFAR, synthetic) become device-resident loaders; `lists` datasets
(ImageNet-LT, Places-LT, iNaturalist, folders) become worker DataLoaders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lwrcli.config import TrainConfig
from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.errors import UserError
from lwrcli.runtime.distributed import DistInfo


class BatchLoader(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...


class TrainLoader(BatchLoader, Protocol):
    """A training loader that can stop between two batches and continue there exactly."""

    @property
    def position(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class _ListLoader:
    """Wraps a DataLoader of a `lists` dataset so batches arrive on the device, and tracks the
    position inside a training epoch (the sampler's order depends on the epoch alone and each
    image's augmentation on its own seed, so epoch + position is an exact resume point)."""

    def __init__(self, loader: Any, device: torch.device, channels_last: bool, steps: int) -> None:
        self.loader = loader
        self.device = device
        self.channels_last = channels_last
        self.steps = steps
        self._epoch = -1
        self._position = 0

    def __len__(self) -> int:
        return self.steps

    @property
    def position(self) -> int:
        return self._position

    def set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch, self._position = epoch, 0
        self.loader.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from lwrcli.data.image_loader import to_device

        sampler = self.loader.sampler
        if hasattr(sampler, "start"):
            sampler.start = self._position * self.loader.batch_size
        for batch in self.loader:
            x, y = to_device(batch, self.device)
            if self.channels_last and x.dim() == 4:  # (B, K, 3, S, S) crops: see predict
                x = x.contiguous(memory_format=torch.channels_last)
            self._position += 1
            yield x, y
        self._position = 0
        if hasattr(sampler, "start"):
            sampler.start = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"epoch": torch.tensor([self._epoch]), "position": torch.tensor([self._position])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._epoch, self._position = int(state["epoch"]), int(state.get("position", [0])[0])
        self.loader.sampler.set_epoch(self._epoch)


@dataclass
class DataBundle:
    manifest: Manifest
    train: TrainLoader | None
    evals: dict[str, BatchLoader] = field(default_factory=dict)  # split name -> loader
    # The prepared dataset's folder: work that needs another pass over a split (class-mean
    # head initialisation) builds its own loader from it.
    data_dir: Path | None = None

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


def per_process_batch(
    global_batch: int, world: int, accum: int = 1, key: str = "batch_size"
) -> int:
    """batch_size is the global batch: each of the `world` processes takes global / world (and
    splits it into `accum` micro-batches). Anything that does not divide is refused."""
    unit = world * accum
    if global_batch % unit == 0:
        return global_batch // unit
    lower = global_batch // unit * unit
    options = " and ".join(str(v) for v in (lower, lower + unit) if v > 0)
    parts = f"{world} processes" + (f" x accum_steps {accum}" if accum > 1 else "")
    raise UserError(
        f"{key} {global_batch} is the global batch and must divide evenly over "
        f"{parts} = {unit}; the nearest valid values are {options} (--set {key}=...)."
    )


def check_train_size(n: int, global_batch: int, data_dir: Path) -> None:
    """A train split smaller than one global batch would 'train' zero (or one ragged) steps
    per epoch and report a loss of 0: refuse it before anything starts."""
    if n >= global_batch:
        return
    raise UserError(
        f"The train split of {data_dir} has {n} images, fewer than one batch of "
        f"{global_batch}: an epoch would run no full step. Lower batch_size (--set "
        f"batch_size={max(n, 1)}) or prepare a larger train split."
    )


def batch_sizes(cfg: TrainConfig, dist: DistInfo) -> tuple[int, int]:
    """(train, eval) batch per process: the global sizes over the world; training batches are
    later split into cfg.accum_steps micro-batches by the engine."""
    train = per_process_batch(cfg.batch_size, dist.world_size, cfg.accum_steps)
    return train * cfg.accum_steps, per_process_batch(
        cfg.eval_batch_size, dist.world_size, 1, "eval_batch_size"
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
    train_wrap: Callable[[Any, Callable[..., Any]], Any] | None = None,
) -> DataBundle:
    """The loaders of a prepared dataset. `train_wrap(loader, second)` replaces the training
    loader (a method that draws two batches per step, or augmented views of each image), where
    `second(sampler=..., seed=..., views=...)` builds another loader over the training split
    (the config's sampler and seed where not given), sharing its device-resident images;
    `views` > 1 gives batches of V augmented views of each image, (B, V, 3, H, W), and
    `drop_last` leaves out the last partial global batch (the image lists always do)."""
    dist = dist or DistInfo()
    manifest = read_manifest(data_dir)
    wanted = eval_splits(manifest) if splits is None else splits
    for split in wanted:
        if split not in manifest.splits:
            raise UserError(
                f"Dataset {data_dir} has no '{split}' split (it has {', '.join(manifest.splits)})."
            )
    if cfg.eval_tte and manifest.storage == "arrays" and cfg.data.array_resize is None:
        raise UserError(
            f"The test-time ensemble (eval_tte / --tte: five crops of the image enlarged by 24 "
            f"px) is for large-image datasets; {data_dir} stores {manifest.image_size}x"
            f"{manifest.image_size} uint8 arrays that the model sees at their own size, where "
            "enlarging by 24 px would be a different test-time transform from LIFT's. Set "
            "data.array_resize (e.g. 224 for a CLIP ViT: the crops then come from the image "
            "upsampled to 248, as LIFT does on CIFAR), or evaluate without it."
        )
    make = _arrays_loader if manifest.storage == "arrays" else _list_loader
    data_dir = Path(data_dir)

    def loader(split: str, is_train: bool) -> BatchLoader:
        return make(data_dir, manifest, cfg, device, dist, split, is_train)

    if train:
        check_train_size(manifest.splits.get("train", 0), cfg.batch_size, data_dir)
    train_loader = loader("train", True) if train else None
    if train_loader is not None and train_wrap is not None:
        first = train_loader

        def second(
            sampler: str | None = None,
            seed: int | None = None,
            views: int = 1,
            drop_last: bool = False,
        ) -> Any:
            args = (data_dir, manifest, cfg, device, dist, "train", True, sampler, seed)
            if manifest.storage == "arrays":  # the same device-resident images, not a copy
                return _arrays_loader(*args, shared=first, views=views, drop_last=drop_last)
            return _list_loader(*args, views=views)  # it drops the last partial batch anyway

        train_loader = train_wrap(train_loader, second)
    return DataBundle(manifest, train_loader, {s: loader(s, False) for s in wanted}, data_dir)


def _arrays_loader(
    data_dir: Path,
    manifest: Manifest,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo,
    split: str,
    is_train: bool,
    sampler: str | None = None,
    seed: int | None = None,
    shared: Any = None,
    views: int = 1,
    drop_last: bool = False,
) -> BatchLoader:
    """Small images: the split's uint8 tensor moved to the device once. `sampler` and `seed`
    replace the config's, and `shared` (a loader of the same split) lends its device tensors
    (a second training loader: build_data's `train_wrap`); `views`: augmented views per image;
    `drop_last`: no last partial global batch."""
    from lwrcli.data.arrays import load_arrays
    from lwrcli.data.device_augment import device_policy
    from lwrcli.data.device_loader import DeviceImageLoader

    if shared is not None:
        images, labels = shared.images, shared.labels
    else:
        images, labels = load_arrays(data_dir, split)
    return DeviceImageLoader(
        images.to(device),
        labels.to(device),
        batch_size=batch_sizes(cfg, dist)[0 if is_train else 1],
        mean=cfg.data.mean,
        std=cfg.data.std,
        train=is_train,
        padding=cfg.data.crop_padding,
        flip=cfg.data.flip,
        seed=cfg.seed if seed is None else seed,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=cfg.channels_last is True,  # unresolved "auto" counts as off here
        sampler=sampler or cfg.data.sampler,
        num_samples_cls=cfg.data.num_samples_cls,
        epochs=cfg.epochs,
        resize=cfg.data.array_resize,
        tte=cfg.eval_tte and not is_train,
        policy=device_policy(cfg.data) if is_train else None,
        views=views if is_train else 1,
        drop_last=drop_last and is_train,
    )


def _list_loader(
    data_dir: Path,
    manifest: Manifest,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo,
    split: str,
    is_train: bool,
    sampler: str | None = None,
    seed: int | None = None,
    views: int = 1,
) -> BatchLoader:
    """Large images: a worker DataLoader whose batches are moved to the device. `sampler` and
    `seed` replace the config's (a second training loader: build_data's `train_wrap`);
    `views`: augmented views per image."""
    from lwrcli.data.image_loader import build_image_loader

    dl = build_image_loader(
        data_dir,
        manifest,
        split,
        cfg.data,
        batch_size=batch_sizes(cfg, dist)[0 if is_train else 1],
        train=is_train,
        seed=cfg.seed if seed is None else seed,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
        epochs=cfg.epochs,
        tte=cfg.eval_tte and not is_train,
        sampler=sampler,
        views=views if is_train else 1,
    )
    steps = len(dl) if not is_train else dl.sampler.steps
    return _ListLoader(dl, device, cfg.channels_last is True, steps)
