"""The input side of an exported model: what it takes (InputContract, from the checkpoint's
eval transform and its prepared dataset) and the wrapper that folds the checkpoint's
normalisation into the model (Preprocessed), so a consumer only decodes and resizes/crops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.checkpoint.files import Checkpoint
from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.errors import UserError
from lwrcli.train.rundir import RUN_INFO, read_run_info
from lwrcli.use.evaluate import check_compatible

INPUT_DTYPES = ("uint8", "float")
# Stored sizes of the small-image sources (uint8 arrays), for checkpoints exported without
# their prepared dataset at hand.
ARRAY_SOURCES = {"cifar10": 32, "cifar100": 32, "synthetic": 32}


@dataclass
class InputContract:
    """What the exported model takes: RGB images (B, 3, size, size), NCHW, of `dtype` uint8
    (0..255) or float32 in [0, 1]; normalised inside with `mean`/`std` (of [0, 1] values).
    `resize`: the shorter side before the centre crop of `size` (large-image runs, as `lwr
    eval` does), or None: the whole image resized to size x size (small-image runs, stored
    that way). `upsample`: size the model itself sees, reached inside by bilinear upsampling
    (data.array_resize runs), or None."""

    dtype: Literal["uint8", "float"]
    size: int
    resize: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    upsample: int | None = None

    def describe(self) -> str:
        """One paragraph for the model card and --help readers."""
        values = "uint8 values 0..255" if self.dtype == "uint8" else "float32 values in [0, 1]"
        prep = (
            f"resize the shorter side to {self.resize} px (bilinear, antialiased), then centre-"
            f"crop {self.size}x{self.size}"
            if self.resize
            else f"resize the image to {self.size}x{self.size} (centre-crop a square first if "
            "its sides differ)"
        )
        up = (
            f" The model upsamples to {self.upsample}x{self.upsample} inside, as in training."
            if self.upsample
            else ""
        )
        return (
            f"Input `images`: RGB, shape (B, 3, {self.size}, {self.size}) (NCHW, any batch size "
            f"B), {values}. Before feeding: decode to RGB, {prep}. Normalisation (mean "
            f"{list(self.mean)}, std {list(self.std)} of [0, 1] values) happens inside.{up} "
            "Output `logits`: (B, C) float32, raw (softmax for probabilities), classes in the "
            "order of `class_names`."
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "images",
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": "uint8" if self.dtype == "uint8" else "float32",
            "range": [0, 255] if self.dtype == "uint8" else [0.0, 1.0],
            "size": self.size,
            "resize": self.resize,
            "crop": "center",
            "mean": list(self.mean),
            "std": list(self.std),
            "upsample": self.upsample,
            "output": "logits",
        }


class Preprocessed(nn.Module):
    """RGB images (B, 3, S, S) uint8 or float [0, 1] -> logits (B, C) float32: the checkpoint's
    normalisation (and upsampling) folded in, so the file is the whole inference path."""

    def __init__(self, model: nn.Module, contract: InputContract) -> None:
        super().__init__()
        self.model = model
        self.upsample = contract.upsample
        mean = torch.tensor(contract.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(contract.std, dtype=torch.float32).view(1, 3, 1, 1)
        unit = 255.0 if contract.dtype == "uint8" else 1.0
        # (x / unit - mean) / std as one multiply-add, as lwrcli.data.transforms.normalize.
        self.register_buffer("scale", 1.0 / (unit * std))
        self.register_buffer("shift", mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) * self.scale - self.shift
        if self.upsample is not None:
            # Bilinear upsampling is affine-equivariant, so upsampling after the normalisation
            # equals training's upsample-then-normalise; antialiasing only acts when shrinking.
            x = F.interpolate(x, size=(self.upsample, self.upsample), mode="bilinear")
        return self.model(x).float()


def find_manifest(ckpt: Checkpoint, data_dir: Path | None) -> Manifest | None:
    """The prepared dataset the checkpoint was trained on: --data, else the run folder's record
    (run.json) when that dataset is still there with the same fingerprint."""
    if data_dir is not None:
        manifest = read_manifest(data_dir)
        check_compatible(ckpt, manifest, data_dir)
        return manifest
    if ckpt.path is None or ckpt.path.parent.name != "checkpoints":
        return None
    info = read_run_info(ckpt.path.parent.parent / RUN_INFO)
    recorded = info.get("data_dir")
    if not recorded or not (Path(recorded) / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(Path(recorded))
    except UserError:
        return None
    fingerprint = ckpt.meta.get("dataset_fingerprint")
    if fingerprint and manifest.fingerprint != fingerprint:
        return None
    return manifest


def resolve_contract(
    ckpt: Checkpoint,
    manifest: Manifest | None,
    dtype: str,
    image_size: int | None = None,
) -> InputContract:
    """The input contract of the checkpoint's eval transform: a small-image run (arrays) sees
    its stored size (upsampled to data.array_resize when set), a large-image run the centre
    crop data.image_size of the shorter side resized to data.resize. `image_size` overrides
    the size (for a dataset that is not at hand)."""
    if dtype not in INPUT_DTYPES:
        raise UserError(f"--input must be one of {', '.join(INPUT_DTYPES)}, not '{dtype}'.")
    cfg, dataset = ckpt.config.data, ckpt.config.dataset
    recorded = ckpt.meta.get("dataset_storage")  # what the run trained on, in its metadata
    if manifest is not None:
        arrays, stored = manifest.storage == "arrays", manifest.image_size
    elif recorded in ("arrays", "lists"):
        size = ckpt.meta.get("dataset_image_size")
        arrays, stored = recorded == "arrays", int(size) if size else None
    elif dataset in ARRAY_SOURCES:
        arrays, stored = True, ARRAY_SOURCES[dataset]
    elif dataset in ("any", "folder"):  # either storage: the dataset decides
        if image_size is None:
            raise UserError(
                f"Cannot tell the input size of {ckpt.path}: it was trained on a '{dataset}' "
                "dataset that is not at hand (the checkpoint is not in a run folder whose "
                "dataset still exists). Pass the prepared dataset with --data DIR, or the "
                "size with --image-size N."
            )
        arrays, stored = True, image_size
    else:  # the large-image sources (imagenet-lt, places-lt, inat2018)
        arrays, stored = False, None
    if arrays:
        size = int(image_size or stored or 32)
        upsample = cfg.array_resize if cfg.array_resize not in (None, size) else None
        return InputContract(dtype, size, None, cfg.mean, cfg.std, upsample)  # type: ignore[arg-type]
    size = image_size or cfg.image_size
    return InputContract(dtype, size, max(cfg.resize, size), cfg.mean, cfg.std)  # type: ignore[arg-type]
