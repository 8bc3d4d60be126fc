"""Fake CIFAR archives in the official on-disk format, for tests (no download here).

The official files were written by Python 2 (cPickle, protocol 2): dicts whose keys and
strings are Python 2 byte strings (BINSTRING opcodes), `data` a uint8 numpy array (N, 3072)
of R, G, B planes pickled through `numpy.core.multiarray._reconstruct`, labels as lists in a
shuffled class order. Python 3 would write bytes through `_codecs.encode` and numpy 2 would
name `numpy._core`, so a small pickler subclass writes what Python 2 and numpy 1 wrote.
Images are random; the per-class counts and the file layout are the real ones by default.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

# variant: (folder, classes, train per class, test per class)
SPEC = {
    "cifar10": ("cifar-10-batches-py", 10, 5000, 1000),
    "cifar100": ("cifar-100-python", 100, 500, 100),
}
_RECONSTRUCT = np.zeros(1, np.uint8).__reduce__()[0]


class _Py2Pickler(pickle._Pickler):  # the pure-python pickler, whose dispatch table is open
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _RECONSTRUCT:  # the name numpy 1 (and so the official archive) used
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_py2(path: Path, obj: dict) -> None:
    """Pickle `obj` the way Python 2's cPickle.dump(obj, f, 2) did."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    Path(path).write_bytes(buf.getvalue())


def write_fake_cifar(
    root: Path,
    variant: str,
    per_class_train: int | None = None,
    per_class_test: int | None = None,
    seed: int = 0,
) -> Path:
    """Write `root/cifar-10-batches-py` or `root/cifar-100-python`; returns that folder.

    Per-class counts default to the real ones (CIFAR-10 5000/1000, CIFAR-100 500/100).
    """
    folder_name, classes, n_train, n_test = SPEC[variant]
    n_train = n_train if per_class_train is None else per_class_train
    n_test = n_test if per_class_test is None else per_class_test
    rng = np.random.default_rng(seed)
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    train_y = rng.permutation(np.repeat(np.arange(classes), n_train))
    test_y = rng.permutation(np.repeat(np.arange(classes), n_test))
    train_x = rng.integers(0, 256, (len(train_y), 3072), dtype=np.uint8)
    test_x = rng.integers(0, 256, (len(test_y), 3072), dtype=np.uint8)
    names = [f"class_{i:03d}".encode() for i in range(classes)]

    def files(idx: np.ndarray) -> list[bytes]:
        return [f"fake_{i:05d}.png".encode() for i in idx]

    if variant == "cifar10":
        # The real training set is five batches of 10,000.
        for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            batch = {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": train_y[part].tolist(),
                b"data": train_x[part],
                b"filenames": files(part),
            }
            dump_py2(folder / f"data_batch_{i}", batch)
        test = {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_y.tolist(),
            b"data": test_x,
            b"filenames": files(np.arange(len(test_y))),
        }
        dump_py2(folder / "test_batch", test)
        meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
        dump_py2(folder / "batches.meta", meta)
    else:
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            batch = {
                b"filenames": files(np.arange(len(y))),
                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                b"fine_labels": y.tolist(),
                b"coarse_labels": (y // 5).tolist(),
                b"data": x,
            }
            dump_py2(folder / split, batch)
        coarse = [f"superclass_{i:02d}".encode() for i in range(20)]
        dump_py2(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": coarse})
    return folder
