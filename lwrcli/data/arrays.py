"""Small-image prepared datasets: uint8 NCHW arrays in safetensors files, one per split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import save_file
from safetensors.torch import load_file

from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.errors import UserError


def split_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.safetensors"


def save_split(
    folder: Path,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    source_indices: np.ndarray | None = None,
) -> bytes:
    """Write images (N, 3, H, W) uint8 and labels (N,) int64; returns the file's bytes
    (for the fingerprint). Fixed metadata so the same arrays give the same bytes."""
    tensors = {
        "images": np.ascontiguousarray(images, dtype=np.uint8),
        "labels": np.ascontiguousarray(labels, dtype=np.int64),
    }
    if source_indices is not None:
        tensors["source_indices"] = np.ascontiguousarray(source_indices, dtype=np.int64)
    path = split_path(folder, split)
    # One metadata key: safetensors writes a map in hash order, which would break determinism.
    save_file(tensors, str(path), metadata={"format": "lwr-arrays-1"})
    return path.read_bytes()


def load_arrays(
    data_dir: Path, split: str, manifest: Manifest | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, H, W), labels int64 (N,)) of one split, checked against the manifest."""
    manifest = manifest or read_manifest(data_dir)
    path = split_path(data_dir, split)
    if not path.is_file():
        raise UserError(
            f"{path} is missing: the prepared dataset {data_dir} is incomplete. Prepare it "
            "again with 'lwr prepare-data ... --overwrite'."
        )
    try:
        tensors = load_file(str(path))
        images, labels = tensors["images"], tensors["labels"]
    except (SafetensorError, OSError, KeyError, RuntimeError) as exc:
        raise UserError(
            f"{path} is damaged ({exc.__class__.__name__}); prepare the dataset again with "
            "'lwr prepare-data ... --overwrite'."
        ) from None
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise UserError(f"{path} does not hold uint8 (N, 3, H, W) images.")
    if len(labels) != len(images) or len(labels) != manifest.splits.get(split, -1):
        raise UserError(
            f"{path} holds {len(labels)} labels but the manifest says "
            f"{manifest.splits.get(split)}; the dataset folder is inconsistent."
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= manifest.num_classes):
        raise UserError(f"{path} has labels outside 0..{manifest.num_classes - 1}.")
    return images, labels
