"""CIFAR-LT from archives in the official format."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fakecifar import write_fake_cifar
from test_profiles import ldam_reference

from lwrcli.data.arrays import load_arrays
from lwrcli.data.cifar import prepare_cifar, read_pickle
from lwrcli.data.profiles import long_tailed_counts
from lwrcli.errors import UserError


@pytest.fixture(scope="module")
def raw100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw100")
    write_fake_cifar(root, "cifar100")
    return root


@pytest.fixture(scope="module")
def raw10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw10")
    write_fake_cifar(root, "cifar10")
    return root


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("ir, total", [(100, 10847), (50, 12608), (10, 19573)])
def test_cifar100_counts(raw100: Path, tmp_path: Path, ir: int, total: int) -> None:
    m = prepare_cifar("cifar100", raw100, tmp_path / "out", imbalance_factor=ir)
    assert sum(m.class_counts) == m.splits["train"] == total
    assert m.splits["test"] == 10000 and m.num_classes == 100


def test_cifar10_counts_and_root_variants(raw10: Path, tmp_path: Path) -> None:
    m = prepare_cifar("cifar10", raw10, tmp_path / "a")
    assert m.splits["train"] == 12406 and m.class_counts[0] == 5000 and m.class_counts[-1] == 50
    m2 = prepare_cifar("cifar10", raw10 / "cifar-10-batches-py", tmp_path / "b")  # folder itself
    assert m2.fingerprint == m.fingerprint


def test_exact_ldam_selection_and_images(raw100: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_cifar("cifar100", raw100, out, imbalance_factor=100, seed=0)
    with open(raw100 / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")  # the test's own plain reader
    labels = np.array(raw[b"fine_labels"])
    expected = ldam_reference(labels, long_tailed_counts(500, 100, 100, "exp"), 0)
    from safetensors.numpy import load_file

    stored = load_file(str(out / "train.safetensors"))
    assert np.array_equal(stored["source_indices"], expected)
    assert np.array_equal(stored["labels"], labels[expected])
    assert np.array_equal(stored["images"], raw[b"data"][expected].reshape(-1, 3, 32, 32))
    images, lab = load_arrays(out, "train")
    assert images.shape == (10847, 3, 32, 32) and images.dtype == torch.uint8
    assert lab.tolist() == labels[expected].tolist()


def test_byte_identical_rerun(raw100: Path, tmp_path: Path) -> None:
    prepare_cifar("cifar100", raw100, tmp_path / "a", imbalance_factor=50, seed=3)
    prepare_cifar("cifar100", raw100, tmp_path / "b", imbalance_factor=50, seed=3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    prepare_cifar("cifar100", raw100, tmp_path / "c", imbalance_factor=50, seed=4)
    assert (
        _digest(tmp_path / "a")["train.safetensors"] != _digest(tmp_path / "c")["train.safetensors"]
    )


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps({b"fine_label_names": Evil()}, protocol=2))
    with pytest.raises(
        UserError, match="Refusing to unpickle global '(__builtin__|builtins).print'"
    ):
        read_pickle(path)


def test_missing_and_damaged_archives(raw100: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--download"):
        prepare_cifar("cifar100", tmp_path / "nothing", tmp_path / "o1")
    broken = tmp_path / "broken" / "cifar-100-python"
    broken.mkdir(parents=True)
    (broken / "meta").write_bytes((raw100 / "cifar-100-python" / "meta").read_bytes())
    (broken / "train").write_bytes((raw100 / "cifar-100-python" / "train").read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable CIFAR archive"):
        prepare_cifar("cifar100", tmp_path / "broken", tmp_path / "o2")
    assert not (tmp_path / "o2").exists()  # nothing half-written is left behind
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".o2")] == []
