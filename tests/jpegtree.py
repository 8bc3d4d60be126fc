"""A small tree of real JPEG files, and standard-format lists that reference them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg(
    path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 48), mode: str = "RGB"
) -> None:
    """A random-pixel JPEG of (height, width) `size`, stored as `mode` (RGB, L or CMYK)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, quality=85)


def write_list_dataset(
    root: Path, classes: int = 6, per_class: tuple[int, int, int] = (8, 2, 3), seed: int = 0
) -> dict[str, Path]:
    """root/images/{train,val,test}/cNN/*.jpg and root/lists/Tiny_{train,val,test}.txt with
    a long-tailed train split (class c gets per_class[0] - c images, at least 1)."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    lists: dict[str, Path] = {}
    (root / "lists").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "val", "test"), per_class):
        lines = []
        for c in range(classes):
            count = max(1, n - c) if split == "train" else n
            for i in range(count):
                rel = f"{split}/c{c:02d}/{i:04d}.jpg"
                write_jpeg(images / rel, rng)
                lines.append(f"{rel} {c}")
        lists[split] = root / "lists" / f"Tiny_{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
    return lists


def write_image_folder(root: Path, counts: list[int], seed: int = 0) -> None:
    """root/class_CC/img_III.jpg with counts[c] images for class c (names sort in class
    order)."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(counts):
        for i in range(n):
            write_jpeg(root / f"class_{c:02d}" / f"img_{i:03d}.jpg", rng, (20, 24))
