"""Fake CIFAR archives in the official on-disk format, for tests (no download here).

The official files are Python-2 pickles (protocol 2) of dicts with byte-string keys, `data`
a uint8 numpy array (N, 3072) of R, G, B planes and labels as lists, written in a shuffled
label order. Images here are random; counts and layout are the real ones by default.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

SPEC = {
    "cifar10": ("cifar-10-batches-py", 10, 5000, 1000),
    "cifar100": ("cifar-100-python", 100, 500, 100),
}


def _labels(rng: np.random.Generator, classes: int, per_class: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(classes), per_class))


def _dump(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_fake_cifar(
    root: Path,
    variant: str,
    per_class_train: int | None = None,
    per_class_test: int | None = None,
    seed: int = 0,
) -> Path:
    """Write `root/cifar-10-batches-py` or `root/cifar-100-python`; returns that folder."""
    folder_name, classes, n_train, n_test = SPEC[variant]
    n_train = per_class_train or n_train
    n_test = per_class_test or n_test
    rng = np.random.default_rng(seed)
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    train_y = _labels(rng, classes, n_train)
    test_y = _labels(rng, classes, n_test)
    train_x = rng.integers(0, 256, (len(train_y), 3072), dtype=np.uint8)
    test_x = rng.integers(0, 256, (len(test_y), 3072), dtype=np.uint8)
    names = [f"class_{i:03d}".encode() for i in range(classes)]
    if variant == "cifar10":
        for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            _dump(
                folder / f"data_batch_{i}",
                {
                    b"batch_label": f"training batch {i} of 5".encode(),
                    b"labels": train_y[part].tolist(),
                    b"data": train_x[part],
                    b"filenames": [f"img_{j}.png".encode() for j in part],
                },
            )
        _dump(
            folder / "test_batch",
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": test_y.tolist(),
                b"data": test_x,
                b"filenames": [b"t.png"] * len(test_y),
            },
        )
        _dump(
            folder / "batches.meta",
            {b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072},
        )
    else:
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _dump(
                folder / split,
                {
                    b"filenames": [b"f.png"] * len(y),
                    b"batch_label": f"{split} batch".encode(),
                    b"fine_labels": y.tolist(),
                    b"coarse_labels": (y // 5).tolist(),
                    b"data": x,
                },
            )
        _dump(
            folder / "meta",
            {
                b"fine_label_names": names,
                b"coarse_label_names": [f"super_{i}".encode() for i in range(20)],
            },
        )
    return folder
