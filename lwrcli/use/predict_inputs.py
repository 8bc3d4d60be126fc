"""The inputs of `lwr predict`: which files (image files, folders, list files) and how each
becomes the tensor the checkpoint's model saw at evaluation (see lwrcli.use.predict for the
rules); unreadable files become reasons, not errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lwrcli.checkpoint.files import Checkpoint
from lwrcli.config import DataConfig
from lwrcli.data.decode import decode_rgb, read_bytes
from lwrcli.data.device_loader import DeviceImageLoader
from lwrcli.data.folder_arrays import fit_square
from lwrcli.data.manifest import read_manifest
from lwrcli.data.transforms import TTE_EXPAND, eval_transform, normalize, tte_transform
from lwrcli.errors import UserError
from lwrcli.train.rundir import RUN_INFO, read_run_info

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})
# Array sources whose stored square size the recipe's dataset name alone fixes (pixels).
KNOWN_ARRAY_SIZES = {"cifar10": 32, "cifar100": 32}


def _folder_images(folder: Path) -> list[Path]:
    """Image files below `folder`, recursively, sorted; hidden files and folders skipped
    (thumbnail caches, editor back-ups), as `prepare-data folder` skips them."""
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in rel):
            if p.is_file():
                found.append(p)
    return sorted(found)


def _list_images(list_file: Path) -> list[Path]:
    """One path per line (blank lines and # comments skipped), relative to the list's folder
    unless absolute. A named file that is missing is kept: it is reported as unreadable."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the list file {list_file}: {exc}.") from None
    paths = [line.strip() for line in lines]
    return [list_file.parent / p for p in paths if p and not p.startswith("#")]


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image paths from image files, folders (recursive; jpg/jpeg/png/bmp/webp in any case)
    and list files (.txt/.lst), in the order given, each once."""
    seen: dict[Path, None] = {}
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            found = _folder_images(p)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            found = _list_images(p)
        elif p.is_file():
            found = [p]  # named explicitly: whatever its extension, try to decode it
        else:
            raise UserError(f"Input {p} does not exist (give image files, folders or lists).")
        seen.update(dict.fromkeys(found))
    if not seen:
        shown = ", ".join(map(str, inputs))
        raise UserError(
            f"No images found in {shown}: folders are searched recursively for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} files (any case); list files name one path "
            "per line."
        )
    return list(seen)


@dataclass(frozen=True)
class InputSpec:
    """How the checkpoint's model saw its images: `storage` 'arrays' (stored squares of
    `size` px) or 'lists' (files through the eval transform); `origin` says how we know."""

    storage: str
    size: int | None
    origin: str

    def describe(self, data: DataConfig, tte: bool) -> str:
        crops = " -> five crops (test-time ensemble)" if tte else ""
        if self.storage == "arrays":
            up = f" -> bilinear to {data.array_resize}" if data.array_resize else ""
            return f"centre square -> {self.size}x{self.size} (as stored){up}{crops}"
        if tte:
            return f"shorter side {data.image_size + TTE_EXPAND} -> five crops {data.image_size}"
        return f"shorter side {data.resize} -> centre crop {data.image_size}"


def _from_run_folder(ckpt: Checkpoint) -> InputSpec | None:
    """The storage and size of the prepared dataset the run trained on, when the checkpoint
    sits in its run folder and that dataset is still there."""
    if ckpt.path is None or ckpt.path.parent.name != "checkpoints":
        return None
    try:
        data_dir = read_run_info(ckpt.path.parent.parent / RUN_INFO).get("data_dir")
        manifest = read_manifest(Path(data_dir)) if data_dir else None
    except UserError:
        return None
    if manifest is None:
        return None
    return InputSpec(manifest.storage, manifest.image_size, f"the run's dataset {data_dir}")


def input_spec(ckpt: Checkpoint) -> InputSpec:
    """Arrays or lists, and the stored size: see the module docstring for the order."""
    storage = ckpt.meta.get("dataset_storage")
    if storage in ("arrays", "lists"):
        size = ckpt.meta.get("dataset_image_size") or None
        return InputSpec(storage, int(size) if size else None, "checkpoint metadata")
    spec = _from_run_folder(ckpt)
    if spec is not None:
        return spec
    known = KNOWN_ARRAY_SIZES.get(ckpt.config.dataset)
    if known is not None:
        return InputSpec("arrays", known, f"the recipe's dataset ({ckpt.config.dataset})")
    return InputSpec("lists", None, "default (no record of small-image arrays)")


class ImageFiles(Dataset):
    """Item i: (uint8 image (3, S, S) or crops (5, 3, S, S), i, None), or (None, i, reason)
    for a file that does not decode: one bad file must not end a run over thousands."""

    def __init__(self, paths: list[Path], array_size: int | None, transform: Any) -> None:
        self.paths, self.array_size, self.transform = paths, array_size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        path = self.paths[i]
        try:
            if self.array_size is not None:
                square = fit_square(path, self.array_size)  # (S, S, 3), read-only
                return torch.from_numpy(np.ascontiguousarray(square.transpose(2, 0, 1))), i, None
            return self.transform(decode_rgb(read_bytes(path))), i, None
        except Exception as exc:  # any decoder's failure: report the file, keep going
            return None, i, _reason(exc)


def _reason(exc: BaseException) -> str:
    """The decoder's own words: fit_square wraps them in a prepare-data hint (`from None`
    keeps the original as __context__)."""
    inner = exc.__context__ if isinstance(exc, UserError) and exc.__context__ else exc
    if isinstance(inner, FileNotFoundError):
        return "no such file"
    text = str(inner).splitlines()[0][:200] if str(inner) else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


class Collate:
    """(uint8 images (B, ...) or None, indices (B,), [(index, reason)] of failures); a class
    so spawn-started workers can pickle it."""

    def __call__(
        self, items: list[tuple[torch.Tensor | None, int, str | None]]
    ) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, str]]]:
        good = [(im, i) for im, i, _ in items if im is not None]
        bad = [(i, r) for im, i, r in items if im is None and r is not None]
        images = torch.stack([im for im, _ in good]) if good else None
        return images, torch.tensor([i for _, i in good], dtype=torch.int64), bad


class Preprocess:
    """Worker side (uint8, as the eval loaders' workers) and device side (normalise, upsample)
    of the checkpoint's own evaluation input pipeline."""

    def __init__(self, spec: InputSpec, data: DataConfig, tte: bool, device: torch.device):
        self.spec, self.data, self.tte, self.device = spec, data, tte, device
        self.mean = torch.tensor(data.mean, dtype=torch.float32)
        self.std = torch.tensor(data.std, dtype=torch.float32)
        self.arrays: DeviceImageLoader | None = None
        if spec.storage == "arrays":
            if spec.size is None:
                raise UserError("The checkpoint's small-image input size is unknown.")
            if tte and data.array_resize is None:
                raise UserError(
                    "--tte (five crops of the image enlarged by 24 px) is for large-image "
                    f"models; this one sees {spec.size}x{spec.size} images at their own size. "
                    "Predict without --tte."
                )
            # Its normalize() is the device loader's evaluation transform; no images needed.
            empty = torch.empty((0, 3, spec.size, spec.size), dtype=torch.uint8, device=device)
            self.arrays = DeviceImageLoader(
                empty, torch.empty(0, dtype=torch.int64, device=device), 1, data.mean,
                data.std, train=False, resize=data.array_resize, tte=tte,
            )  # fmt: skip

    def dataset(self, paths: list[Path]) -> ImageFiles:
        if self.arrays is not None:
            return ImageFiles(paths, self.spec.size, None)
        transform = tte_transform(self.data) if self.tte else eval_transform(self.data)
        return ImageFiles(paths, None, transform)

    def to_device(self, images: torch.Tensor, channels_last: bool) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        x = (
            self.arrays.normalize(x)
            if self.arrays is not None
            else normalize(x, self.mean, self.std)
        )
        if channels_last and x.dim() == 4:  # as eval's loaders; crops stay (B, K, 3, S, S)
            x = x.contiguous(memory_format=torch.channels_last)
        return x
