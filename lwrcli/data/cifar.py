"""CIFAR-10/100 from the official python archives -> a long-tailed prepared dataset.

The archives are Python 2 pickles. They are read through `RestrictedUnpickler`, which builds
only the numpy arrays they contain and refuses every other global, so a tampered archive
cannot run code. The long-tailed train selection is LDAM-DRW's (`profiles.select_long_tailed`);
the test set stays whole and balanced.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lwrcli.data.arrays import write_arrays
from lwrcli.data.classnames import GivenNames
from lwrcli.data.manifest import Manifest, make_manifest, staged_output, write_manifest
from lwrcli.data.profiles import long_tailed_counts, select_long_tailed
from lwrcli.data.sources import DEFAULT_IMBALANCE_FACTOR
from lwrcli.errors import UserError

Variant = Literal["cifar10", "cifar100"]
IMAGE_SIZE = 32
PIXELS = 3 * IMAGE_SIZE * IMAGE_SIZE  # one row of 'data': R, G, B planes of 32 x 32, row-major


@dataclass(frozen=True)
class Layout:
    """Where the official python archive keeps things, and what it must contain."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    names_key: str
    labels_key: str
    classes: int
    train_per_class: int  # also n_max of the long-tailed profile
    test_per_class: int
    url: str

    @property
    def files(self) -> tuple[str, ...]:
        return (self.meta, *self.train, *self.test)


LAYOUTS: dict[str, Layout] = {
    "cifar10": Layout(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        names_key="label_names",
        labels_key="labels",
        classes=10,
        train_per_class=5000,
        test_per_class=1000,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": Layout(
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        names_key="fine_label_names",
        labels_key="fine_labels",
        classes=100,
        train_per_class=500,
        test_per_class=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


def _reconstruct() -> Any:
    """numpy's array-unpickling helper, from wherever this numpy version keeps it."""
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


# The only globals an official CIFAR pickle names: numpy's array reconstruction (under its
# numpy 1 and numpy 2 module names), the array type and the dtype type.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, containers and scalars, and nothing else."""

    def __init__(self, file: Any, source: Path) -> None:
        # latin1 turns the Python 2 byte strings into str and gives numpy its raw bytes back,
        # as torchvision does.
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise UserError(
                f"{self.source}: refusing to unpickle global {module}.{name}. An official CIFAR "
                "archive holds only numpy arrays, lists, strings and numbers, so this file is "
                "not one; replace it with the official archive (or use --download)."
            )
        return resolve()


def read_pickle(path: Path) -> dict[str, Any]:
    """One archive file as a dict with str keys (accepting b'data' as well as 'data')."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as exc:  # any decoding failure means a damaged or foreign file
        raise UserError(
            f"{path} is not a readable CIFAR archive file ({exc.__class__.__name__}: {exc}); "
            "it is damaged or truncated. Extract the official archive again or use --download."
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a CIFAR archive file (it holds no dictionary).")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def _download(variant: Variant, into: Path) -> None:
    """Fetch and extract the official archive into `into` (only on an explicit --download)."""
    layout = LAYOUTS[variant]
    try:
        import torchvision
    except ImportError:
        raise UserError(
            f"--download needs torchvision; install it or download {layout.url} yourself and "
            f"extract it under {into}."
        ) from None
    cls = torchvision.datasets.CIFAR10 if variant == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(into), train=True, download=True)
    except Exception as exc:  # network and disk errors belong to the user's environment
        raise UserError(
            f"Downloading {variant} into {into} failed ({exc.__class__.__name__}: {exc}). "
            f"Check the network, or download {layout.url} yourself and extract it under {into}."
        ) from None


def find_archive(variant: Variant, root: Path, download: bool = False) -> Path:
    """The folder holding the archive files: `root/<archive folder>` or `root` itself."""
    layout = LAYOUTS[variant]
    root = Path(root)
    is_itself = root.name == layout.folder or (root / layout.meta).is_file()
    folder = root if is_itself else root / layout.folder
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing and download:
        _download(variant, folder.parent)
        missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"The {variant} archive is missing or incomplete: {folder / missing[0]} does not "
            f"exist{more}. --root must point at the folder containing '{layout.folder}' (or at "
            f"that folder itself) from the official python archive {layout.url}; add --download "
            f"to fetch it into {folder.parent}."
        )
    return folder


def _batch_arrays(path: Path, batch: dict[str, Any], layout: Layout) -> tuple[np.ndarray, ...]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one archive file, checked."""
    for key in ("data", layout.labels_key):
        if key not in batch:
            raise UserError(f"{path} lacks the '{key}' entry; it is not an official archive file.")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise UserError(f"{path}: 'data' is not a 2-d uint8 array; the file is damaged.")
    try:
        labels = np.asarray(batch[layout.labels_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: the labels are not integers; the file is damaged.") from None
    if data.shape[1] != PIXELS or labels.shape != (len(data),):
        raise UserError(
            f"{path} has data of shape {data.shape} and {labels.size} labels; an official file "
            f"has (N, {PIXELS}) data and N labels."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.classes):
        raise UserError(f"{path} has labels outside 0..{layout.classes - 1}; the file is damaged.")
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels


def read_split(folder: Path, variant: Variant, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of the archive's train or test files,
    in file order (the order LDAM-DRW's indices refer to)."""
    layout = LAYOUTS[variant]
    parts = [
        _batch_arrays(folder / name, read_pickle(folder / name), layout)
        for name in getattr(layout, split)
    ]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    per_class = layout.train_per_class if split == "train" else layout.test_per_class
    found = np.bincount(labels, minlength=layout.classes)
    wrong = np.flatnonzero(found != per_class)
    if len(wrong):
        c = int(wrong[0])
        raise UserError(
            f"The {variant} {split} files in {folder} hold {found[c]} images of class {c}; the "
            f"official archive has exactly {per_class} per class. The archive is damaged or not "
            "the official one; extract it again or use --download."
        )
    return images, labels


def read_class_names(folder: Path, variant: Variant) -> list[str]:
    layout = LAYOUTS[variant]
    path = folder / layout.meta
    names = read_pickle(path).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.classes:
        raise UserError(
            f"{path} does not list {layout.classes} class names under '{layout.names_key}'; "
            "it is damaged or not the official file."
        )
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def prepare_cifar(
    variant: Variant,
    root: Path,
    out: Path,
    imbalance_factor: float = DEFAULT_IMBALANCE_FACTOR,
    profile: str = "exp",
    seed: int = 0,
    download: bool = False,
    overwrite: bool = False,
    given_names: GivenNames | None = None,
) -> Manifest:
    """Long-tailed CIFAR train split (LDAM-DRW selection) + the whole test set -> `out`.

    Writes train.safetensors (images, labels, source_indices), test.safetensors (images,
    labels) and manifest.json atomically; the same inputs give byte-identical files.
    """
    if variant not in LAYOUTS:
        raise UserError(f"Unknown CIFAR variant '{variant}'; use cifar10 or cifar100.")
    layout = LAYOUTS[variant]
    counts = long_tailed_counts(layout.train_per_class, layout.classes, imbalance_factor, profile)
    with staged_output(out, overwrite) as tmp:  # refuses a used --out before any work
        folder = find_archive(variant, root, download)
        names = read_class_names(folder, variant)
        train_x, train_y = read_split(folder, variant, "train")
        test_x, test_y = read_split(folder, variant, "test")
        keep = select_long_tailed(train_y, counts, seed)
        fp, split_fps = write_arrays(
            tmp,
            {
                "train": {
                    "images": train_x[keep],
                    "labels": train_y[keep],
                    "source_indices": keep,
                },
                "test": {"images": test_x, "labels": test_y},
            },
        )
        manifest = make_manifest(
            name=f"{variant}-lt-ir{imbalance_factor:g}-{profile}-seed{seed}",
            source=variant,
            storage="arrays",
            class_names=names,
            class_names_source=f"cifar meta file ({layout.meta}: {layout.names_key})",
            given_names=given_names,
            class_counts=np.bincount(train_y[keep], minlength=layout.classes).tolist(),
            splits={"train": len(keep), "test": len(test_y)},
            imbalance_factor=float(imbalance_factor),
            profile=profile,
            seed=seed,
            image_size=IMAGE_SIZE,
            fingerprint=fp,
            split_fingerprints=split_fps,
            notes=[
                f"train split: LDAM-DRW selection (global numpy seed {seed}, per-class shuffle)"
            ],
        )
        write_manifest(tmp, manifest)
    return manifest
