"""CIFAR-10/100 from the official python archives -> a long-tailed prepared dataset.

The archives are pickles; they are read through `RestrictedUnpickler`, which builds only the
numpy arrays they contain and refuses every other global, so a tampered archive cannot run
code. The long-tailed selection is LDAM-DRW's (see `profiles.select_long_tailed`).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lwrcli.data.arrays import save_split
from lwrcli.data.manifest import Manifest, fingerprint, make_manifest, staged_output, write_manifest
from lwrcli.data.profiles import long_tailed_counts, select_long_tailed
from lwrcli.errors import UserError

Variant = Literal["cifar10", "cifar100"]

LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
        "classes": 10,
        "n_max": 5000,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
        "classes": 100,
        "n_max": 500,
    },
}

# The only globals an official CIFAR pickle needs: numpy array reconstruction (under numpy 1
# and numpy 2 module names) and the codec Python 3 uses for bytes in protocol-2 pickles.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UserError(
            f"Refusing to unpickle global '{module}.{name}': CIFAR archives contain only "
            "arrays, lists and strings, so this file is not an official archive."
        )


def read_pickle(path: Path) -> dict[str, Any]:
    """One archive file as a dict with str keys (the archives were written by Python 2)."""
    try:
        data = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except UserError:
        raise
    except Exception as exc:  # any decoding failure means a damaged file
        raise UserError(f"{path} is not a readable CIFAR archive file ({exc}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a CIFAR archive file (no dictionary inside).")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def find_folder(variant: Variant, root: Path, download: bool) -> Path:
    layout = LAYOUT[variant]
    root = Path(root)
    for candidate in (root / layout["folder"], root):
        if (candidate / layout["meta"]).is_file():
            return candidate
    if download:
        import torchvision

        cls = (
            torchvision.datasets.CIFAR10 if variant == "cifar10" else torchvision.datasets.CIFAR100
        )
        try:
            cls(str(root), download=True)
        except Exception as exc:  # network errors are the user's environment
            raise UserError(f"Downloading {variant} into {root} failed: {exc}") from None
        return root / layout["folder"]
    raise UserError(
        f"No {variant} archive under {root}: expected {root / layout['folder'] / layout['meta']}. "
        f"Extract the official python version there, or add --download to fetch it."
    )


def read_split(folder: Path, variant: Variant, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of the archive's train or test files."""
    layout = LAYOUT[variant]
    images, labels = [], []
    for name in layout[split]:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{variant} archive at {folder} is incomplete: {name} is missing.")
        batch = read_pickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            lab = np.asarray(batch[layout["labels_key"]], dtype=np.int64)
        except KeyError as exc:
            raise UserError(
                f"{path} lacks the key {exc}; not an official {variant} file."
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise UserError(f"{path} has data of shape {data.shape}; expected (N, 3072).")
        images.append(data.reshape(-1, 3, 32, 32))  # row-major R, G, B planes of 32 x 32
        labels.append(lab)
    x, y = np.concatenate(images), np.concatenate(labels)
    if y.min() < 0 or y.max() >= layout["classes"]:
        raise UserError(f"{variant} {split} labels fall outside 0..{layout['classes'] - 1}.")
    return x, y


def prepare_cifar(
    variant: Variant,
    root: Path,
    out: Path,
    imbalance_factor: float = 100.0,
    profile: str = "exp",
    seed: int = 0,
    download: bool = False,
    overwrite: bool = False,
) -> Manifest:
    layout = LAYOUT[variant]
    counts = long_tailed_counts(layout["n_max"], layout["classes"], imbalance_factor, profile)
    with staged_output(out, overwrite) as tmp:  # refuses a used --out before any work
        folder = find_folder(variant, root, download)
        names = [str(n) for n in read_pickle(folder / layout["meta"])[layout["names_key"]]]
        if len(names) != layout["classes"]:
            raise UserError(
                f"{folder / layout['meta']} lists {len(names)} classes, not {layout['classes']}."
            )
        train_x, train_y = read_split(folder, variant, "train")
        test_x, test_y = read_split(folder, variant, "test")
        keep = select_long_tailed(train_y, counts, seed)
        blobs = {
            "train": save_split(tmp, "train", train_x[keep], train_y[keep], keep),
            "test": save_split(tmp, "test", test_x, test_y),
        }
        ir = f"{imbalance_factor:g}"
        manifest = make_manifest(
            name=f"{variant}-lt-ir{ir}-{profile}-seed{seed}",
            source=variant,
            storage="arrays",
            class_names=names,
            class_counts=np.bincount(train_y[keep], minlength=layout["classes"]).tolist(),
            splits={"train": int(len(keep)), "test": int(len(test_y))},
            imbalance_factor=float(imbalance_factor),
            profile=profile,
            seed=seed,
            image_size=32,
            fingerprint=fingerprint(blobs),
            split_fingerprints={k: fingerprint({k: v}) for k, v in blobs.items()},
            notes=["train split: LDAM-DRW selection (numpy global seed, per-class shuffle)"],
        )
        write_manifest(tmp, manifest)
    return manifest
