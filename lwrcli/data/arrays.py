"""Small-image prepared datasets: uint8 NCHW arrays in one safetensors file per split.

Keys: `images` (N, 3, H, W) uint8, `labels` (N,) int64, and for train `source_indices` (N,)
int64. Training reads these straight into tensors: no pickle, no per-image decoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import save_file
from safetensors.torch import load_file

from lwrcli.data.manifest import Manifest, fingerprint, read_manifest
from lwrcli.errors import UserError
from lwrcli.runtime.files import fix_mode

# One fixed metadata entry: a multi-key map is written in hash order, which would make the
# same arrays give different file bytes from run to run.
FILE_METADATA = {"format": "lwr-arrays-1"}


def split_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.safetensors"


def _tensor_parts(split: str, tensors: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Named byte blobs for the fingerprint; dtype and shape go into the name."""
    return {
        f"{split}/{key}:{arr.dtype.str}{list(arr.shape)}": arr.tobytes()
        for key, arr in tensors.items()
    }


def write_arrays(
    folder: Path, splits: dict[str, dict[str, np.ndarray]]
) -> tuple[str, dict[str, str]]:
    """Write `{split}.safetensors` for each split; returns (fingerprint, split fingerprints).

    The fingerprints hash the tensor bytes (not the file bytes), so they do not depend on the
    safetensors header layout.
    """
    everything: dict[str, bytes] = {}
    per_split: dict[str, str] = {}
    for split, tensors in splits.items():
        fixed = {
            key: np.ascontiguousarray(arr, dtype=np.uint8 if key == "images" else np.int64)
            for key, arr in tensors.items()
        }
        save_file(fixed, str(split_path(folder, split)), metadata=FILE_METADATA)
        fix_mode(split_path(folder, split))  # save_file writes 0600: the umask's mode instead
        parts = _tensor_parts(split, fixed)
        per_split[split] = fingerprint(parts)
        everything.update(parts)
    return fingerprint(everything), per_split


def _remake_hint(data_dir: Path, manifest: Manifest) -> str:
    return (
        f"prepare it again with 'lwr prepare-data {manifest.source} --out {data_dir} "
        "--overwrite' (plus the options it was made with)"
    )


def load_arrays(
    data_dir: Path, split: str, manifest: Manifest | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, H, W), labels int64 (N,)) of one split, checked against the manifest."""
    data_dir = Path(data_dir)
    manifest = manifest or read_manifest(data_dir)
    path = split_path(data_dir, split)
    if manifest.storage != "arrays":
        raise UserError(f"{data_dir} stores image lists, not arrays; it has no {path.name}.")
    if not path.is_file():
        raise UserError(
            f"{path} is missing, so the prepared dataset {data_dir} is incomplete; "
            f"{_remake_hint(data_dir, manifest)}."
        )
    try:
        tensors = load_file(str(path))
        images, labels = tensors["images"], tensors["labels"]
    except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"{path} is damaged ({exc.__class__.__name__}: {exc}); "
            f"{_remake_hint(data_dir, manifest)}."
        ) from None
    size = manifest.image_size
    if (
        images.dtype != torch.uint8
        or images.ndim != 4
        or images.shape[1] != 3
        or (size is not None and tuple(images.shape[2:]) != (size, size))
    ):
        raise UserError(
            f"{path} holds {images.dtype} images of shape {tuple(images.shape)}, not uint8 "
            f"(N, 3, {size}, {size}); {_remake_hint(data_dir, manifest)}."
        )
    expected = manifest.splits.get(split)
    if labels.dtype != torch.int64 or labels.shape != (len(images),) or len(labels) != expected:
        raise UserError(
            f"{path} holds {len(labels)} labels for {len(images)} images but the manifest says "
            f"{expected}; the dataset folder is inconsistent: {_remake_hint(data_dir, manifest)}."
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= manifest.num_classes):
        raise UserError(
            f"{path} has labels outside 0..{manifest.num_classes - 1} (the manifest's classes); "
            f"{_remake_hint(data_dir, manifest)}."
        )
    return images, labels
