"""An embedded long-tailed image source that needs no download (quick start and tests).

Classes come in groups ("superclasses"). Every class image is a sum of coloured parts
(Gaussian blobs and bars): the parts of its group, which all classes of the group share, plus
two parts of its own at class-specific places and colours, drawn fainter. So classes of one
group really compete for the same features, which is the situation LWR is about, while
different groups are easy to tell apart.
Each image gets random part strengths, part dropout, a random background tint, a small
shift and pixel noise. Groups interleave over the class-frequency order, so a tail class has
head classes in its group: a small CNN learns the head classes in a few epochs while the tail
classes of a group stay hard, more so with plain cross-entropy (the long-tailed effect).
Everything is drawn from one seeded numpy Generator: the same seed gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lwrcli.data.arrays import write_arrays
from lwrcli.data.classnames import GivenNames
from lwrcli.data.manifest import Manifest, make_manifest, staged_output, write_manifest
from lwrcli.data.profiles import long_tailed_counts
from lwrcli.data.sources import DEFAULT_IMBALANCE_FACTOR, DEFAULT_SYNTHETIC_CLASSES
from lwrcli.errors import UserError

GROUP_SIZE = 4  # classes per group
SHARED_PARTS = 3  # parts every class of a group shows
OWN_PARTS = 2  # parts only one class shows
OWN_STRENGTH = 0.55  # class-specific parts are fainter than the shared ones
MAX_SHIFT = 2  # pixels
NOISE = 22.0  # pixel noise std, on a 0..255 scale


def _part(rng: np.random.Generator, size: int) -> np.ndarray:
    """One coloured blob or bar: (3, size, size) float, a colour in [0.2, 1] times a shape in
    [0, 1], at a random place."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    color = rng.uniform(0.2, 1.0, 3)
    if rng.random() < 0.5:
        sigma = rng.uniform(0.07, 0.16) * size
        shape = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    else:
        angle = rng.uniform(0, np.pi)
        length, width = rng.uniform(0.3, 0.6) * size, rng.uniform(0.04, 0.08) * size
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        shape = np.exp(-(across**2) / (2 * width**2)) * (np.abs(along) < length / 2)
    return color[:, None, None] * shape[None]


def group_of(c: int, num_classes: int) -> int:
    """Groups interleave over the frequency order, so each holds head and tail classes."""
    return c % ((num_classes + GROUP_SIZE - 1) // GROUP_SIZE)


def class_templates(
    num_classes: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Part strengths per class (C, P) and the parts (P, 3, size, size).

    Parts 0 .. G*SHARED_PARTS-1 belong to the G groups (strength 1 for each class of the
    group); the rest are OWN_PARTS per class (strength OWN_STRENGTH).
    """
    groups = (num_classes + GROUP_SIZE - 1) // GROUP_SIZE
    n_parts = groups * SHARED_PARTS + num_classes * OWN_PARTS
    parts = np.stack([_part(rng, size) for _ in range(n_parts)])
    strength = np.zeros((num_classes, n_parts))
    for c in range(num_classes):
        g = group_of(c, num_classes)
        strength[c, g * SHARED_PARTS : (g + 1) * SHARED_PARTS] = 1.0
        own = groups * SHARED_PARTS + c * OWN_PARTS
        strength[c, own : own + OWN_PARTS] = OWN_STRENGTH
    return strength, parts


def render(
    labels: np.ndarray, strength: np.ndarray, parts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Images (N, 3, H, W) uint8 for labels (N,), each a jittered instance of its template."""
    n = len(labels)
    p, _, h, w = parts.shape
    # Per-part intensity jitter, and each part dropped with probability 0.15.
    coef = strength[labels] * rng.uniform(0.6, 1.4, (n, p)) * (rng.random((n, p)) > 0.15)
    flat = coef @ parts.reshape(p, -1)  # (N, 3·H·W)
    background = rng.uniform(0.05, 0.3, (n, 3, 1, 1))
    img = background + flat.reshape(n, 3, h, w)
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2))
    for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
        for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if sel.any():
                img[sel] = np.roll(img[sel], (dy, dx), axis=(2, 3))
    img = img * 200.0 + rng.normal(0.0, NOISE, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def prepare_synthetic(
    out: Path,
    num_classes: int = DEFAULT_SYNTHETIC_CLASSES,
    n_max: int = 300,
    test_per_class: int = 50,
    image_size: int = 32,
    imbalance_factor: float = DEFAULT_IMBALANCE_FACTOR,
    profile: str = "exp",
    seed: int = 0,
    overwrite: bool = False,
    val_per_class: int = 0,
    given_names: GivenNames | None = None,
) -> Manifest:
    """Generate a long-tailed train split and a balanced test split -> `out`, and a balanced
    val split when `val_per_class` > 0 (drawn last, so train and test do not change).

    Train class c gets the profile's n_c images, test `test_per_class` each; images are
    (3, image_size, image_size) uint8. The same arguments give byte-identical files.
    """
    if not 2 <= num_classes <= 1000:
        raise UserError(f"--num-classes for synthetic data must be 2..1000, got {num_classes}.")
    if not 8 <= image_size <= 128:
        raise UserError(f"Synthetic image size must be 8..128 pixels, got {image_size}.")
    if test_per_class < 1:
        raise UserError(
            f"Synthetic data needs at least 1 test image per class, got {test_per_class}."
        )
    counts = long_tailed_counts(n_max, num_classes, imbalance_factor, profile)
    if min(counts) < 1:
        raise UserError(
            f"With n_max {n_max} and imbalance factor {imbalance_factor:g} some classes get "
            "no training image; use a smaller imbalance factor or a larger n_max."
        )
    with staged_output(out, overwrite) as tmp:  # refuses a used --out before any work
        rng = np.random.default_rng(seed)
        strength, parts = class_templates(num_classes, image_size, rng)
        train_y = np.repeat(np.arange(num_classes), counts)
        test_y = np.repeat(np.arange(num_classes), test_per_class)
        train_x = render(train_y, strength, parts, rng)
        test_x = render(test_y, strength, parts, rng)
        val: dict[str, dict[str, np.ndarray]] = {}
        if val_per_class > 0:
            val_y = np.repeat(np.arange(num_classes), val_per_class)
            val["val"] = {"images": render(val_y, strength, parts, rng), "labels": val_y}
        fp, split_fps = write_arrays(
            tmp,
            {
                **val,
                "train": {
                    "images": train_x,
                    "labels": train_y,
                    "source_indices": np.arange(len(train_y)),
                },
                "test": {"images": test_x, "labels": test_y},
            },
        )
        manifest = make_manifest(
            name=f"synthetic-lt-ir{imbalance_factor:g}-{profile}-c{num_classes}-seed{seed}",
            source="synthetic",
            synthetic=True,
            storage="arrays",
            class_names=[f"group{group_of(c, num_classes)}-class{c}" for c in range(num_classes)],
            class_names_source="synthetic generator (group and class ids)",
            given_names=given_names,
            class_counts=[int(n) for n in counts],
            splits={"train": len(train_y), "test": len(test_y)}
            | ({"val": len(val["val"]["labels"])} if val else {}),
            val_split="val" if val else None,
            imbalance_factor=float(imbalance_factor),
            profile=profile,
            seed=seed,
            image_size=image_size,
            fingerprint=fp,
            split_fingerprints=split_fps,
            notes=[
                "synthetic data generated by lwr; not a real benchmark",
                f"class names groupG-classC: the classes of a group share {SHARED_PARTS} parts",
            ],
        )
        write_manifest(tmp, manifest)
    return manifest
