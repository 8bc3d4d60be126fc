"""CIFAR-LT from archives in the official (Python 2 pickle) format."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakecifar import dump_py2, write_fake_cifar
from safetensors.numpy import load_file
from test_profiles import ldam_img_num_per_cls, ldam_reference

from lwrcli.data.arrays import load_arrays
from lwrcli.data.cifar import prepare_cifar, read_pickle
from lwrcli.data.manifest import read_manifest
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


@pytest.fixture(scope="module")
def lt100(raw100: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-100-LT, IF 100, seed 0, prepared once for the module."""
    out = tmp_path_factory.mktemp("lt100") / "data"
    prepare_cifar("cifar100", raw100, out, imbalance_factor=100, seed=0)
    return out


def _plain_load(path: Path) -> dict:
    """The test's own reader: plain pickle, as torchvision reads the archives."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cifar100_lt_manifest(lt100: Path) -> None:
    m = read_manifest(lt100)
    assert m.name == "cifar100-lt-ir100-exp-seed0" and m.source == "cifar100"
    assert m.storage == "arrays" and m.image_size == 32 and not m.synthetic
    assert m.splits == {"train": 10847, "test": 10000} and m.num_classes == 100
    assert m.class_counts == ldam_img_num_per_cls(500.0, 100, "exp", 0.01)
    assert m.class_names[:2] == ["class_000", "class_001"]
    assert (m.imbalance_factor, m.profile, m.seed) == (100.0, "exp", 0)
    assert set(m.split_fingerprints) == {"train", "test"}
    assert len(m.shot_groups["few"]) > 0 and len(m.shot_groups["many"]) > 0


@pytest.mark.parametrize("ir, total", [(50, 12608), (10, 19573)])
def test_cifar100_other_imbalance_factors(raw100: Path, lt100: Path, tmp_path: Path, ir, total):
    m = prepare_cifar("cifar100", raw100, tmp_path / "out", imbalance_factor=ir)
    assert sum(m.class_counts) == m.splits["train"] == total
    assert m.splits["test"] == 10000
    # The test split is the same whole archive test set, so its fingerprint cannot change.
    assert m.split_fingerprints["test"] == read_manifest(lt100).split_fingerprints["test"]
    assert m.split_fingerprints["train"] != read_manifest(lt100).split_fingerprints["train"]


def test_exact_ldam_selection_and_images(raw100: Path, lt100: Path) -> None:
    raw = _plain_load(raw100 / "cifar-100-python" / "train")
    labels = np.array(raw["fine_labels"])
    expected = ldam_reference(labels, ldam_img_num_per_cls(500.0, 100, "exp", 0.01), 0)
    stored = load_file(str(lt100 / "train.safetensors"))
    assert sorted(stored) == ["images", "labels", "source_indices"]
    assert np.array_equal(stored["source_indices"], expected)
    assert np.array_equal(stored["labels"], labels[expected])
    # Row-major R, G, B planes: pixel (y, x) of channel k is data[k * 1024 + 32 * y + x].
    first = raw["data"][expected[0]]
    assert stored["images"][0, 1, 2, 3] == first[1 * 1024 + 32 * 2 + 3]
    assert np.array_equal(stored["images"], raw["data"][expected].reshape(-1, 3, 32, 32))
    test = _plain_load(raw100 / "cifar-100-python" / "test")
    images, lab = load_arrays(lt100, "test")
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.uint8
    assert lab.dtype == torch.int64 and lab.tolist() == test["fine_labels"]
    assert np.array_equal(images.numpy(), test["data"].reshape(-1, 3, 32, 32))


def test_byte_identical_rerun(raw100: Path, lt100: Path, tmp_path: Path) -> None:
    prepare_cifar("cifar100", raw100, tmp_path / "again", imbalance_factor=100, seed=0)
    assert _digest(tmp_path / "again") == _digest(lt100)
    other = prepare_cifar("cifar100", raw100, tmp_path / "seed1", imbalance_factor=100, seed=1)
    assert _digest(tmp_path / "seed1")["train.safetensors"] != _digest(lt100)["train.safetensors"]
    assert other.fingerprint != read_manifest(lt100).fingerprint
    assert other.class_counts == read_manifest(lt100).class_counts  # same counts, other images


def test_cifar10_counts_and_root_variants(raw10: Path, tmp_path: Path) -> None:
    m = prepare_cifar("cifar10", raw10, tmp_path / "a")
    assert m.splits == {"train": 12406, "test": 10000}
    assert m.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    # The five batches are concatenated in order, as LDAM-DRW (via torchvision) does.
    labels = np.concatenate(
        [
            _plain_load(raw10 / "cifar-10-batches-py" / f"data_batch_{i}")["labels"]
            for i in range(1, 6)
        ]
    )
    stored = load_file(str(tmp_path / "a" / "train.safetensors"))
    assert np.array_equal(stored["source_indices"], ldam_reference(labels, m.class_counts, 0))
    m2 = prepare_cifar("cifar10", raw10 / "cifar-10-batches-py", tmp_path / "b")  # folder itself
    assert m2.fingerprint == m.fingerprint
    step = prepare_cifar("cifar10", raw10, tmp_path / "c", imbalance_factor=10, profile="step")
    assert step.class_counts == [5000] * 5 + [500] * 5 and step.name == "cifar10-lt-ir10-step-seed0"


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps({"fine_label_names": Evil()}, protocol=4))
    with pytest.raises(UserError, match=r"refusing to unpickle global (posix|nt|os)\.mkdir"):
        read_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"x": bytearray(b"ab")}, protocol=4))  # builtins.bytearray
    with pytest.raises(UserError, match="refusing to unpickle global builtins.bytearray"):
        read_pickle(path)


def test_reads_python3_pickles_with_bytes_or_str_keys(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for i, obj in enumerate([{b"data": data, b"labels": [1]}, {"data": data, "labels": [1]}]):
        path = tmp_path / f"f{i}"
        path.write_bytes(pickle.dumps(obj, protocol=4))
        got = read_pickle(path)
        assert sorted(got) == ["data", "labels"] and np.array_equal(got["data"], data)


def test_missing_archive_names_the_file_and_download(raw10: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cifar-100-python/meta does not exist.*--download"):
        prepare_cifar("cifar100", tmp_path / "nothing", tmp_path / "o1")
    partial = tmp_path / "partial" / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    for f in (raw10 / "cifar-10-batches-py").iterdir():
        if f.name != "data_batch_3":
            (partial / f.name).symlink_to(f)
    with pytest.raises(UserError, match=r"data_batch_3 does not exist.*--download"):
        prepare_cifar("cifar10", partial, tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_download_only_when_asked(raw100: Path, tmp_path: Path, monkeypatch) -> None:
    import torchvision

    calls = []

    def fake_cifar100(root: str, train: bool = True, download: bool = False) -> None:
        calls.append((root, download))
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does
        (Path(root) / "cifar-100-python").symlink_to(raw100 / "cifar-100-python")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    with pytest.raises(UserError, match="--download"):
        prepare_cifar("cifar100", tmp_path / "dl", tmp_path / "o1")
    assert calls == []  # never implicitly
    m = prepare_cifar("cifar100", tmp_path / "dl", tmp_path / "o2", download=True)
    assert calls == [(str(tmp_path / "dl"), True)] and m.splits["train"] == 10847


def test_damaged_archives(raw100: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "cifar-100-python"
    broken.mkdir(parents=True)
    src = raw100 / "cifar-100-python"
    (broken / "meta").symlink_to(src / "meta")
    (broken / "test").symlink_to(src / "test")
    (broken / "train").write_bytes((src / "train").read_bytes()[:100_000])
    with pytest.raises(UserError, match="not a readable CIFAR archive.*truncated"):
        prepare_cifar("cifar100", broken.parent, tmp_path / "o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # nothing half-written

    raw = _plain_load(src / "train")
    first = raw["fine_labels"][0]
    raw["fine_labels"][0] = 100  # out of range
    (broken / "train").unlink()
    dump_py2(broken / "train", {k.encode(): v for k, v in raw.items()})
    with pytest.raises(UserError, match=r"labels outside 0\.\.99"):
        prepare_cifar("cifar100", broken.parent, tmp_path / "o")
    raw["fine_labels"][0] = (first + 1) % 100  # one class loses an image, another gains one
    dump_py2(broken / "train", {k.encode(): v for k, v in raw.items()})
    with pytest.raises(UserError, match="exactly 500 per class"):
        prepare_cifar("cifar100", broken.parent, tmp_path / "o")


def test_small_fake_archives_are_not_the_official_counts(tmp_path: Path) -> None:
    root = tmp_path / "small"
    folder = write_fake_cifar(root, "cifar10", per_class_train=7, per_class_test=3, seed=1)
    batch = _plain_load(folder / "data_batch_1")
    assert sorted(batch) == ["batch_label", "data", "filenames", "labels"]
    assert batch["data"].shape == (14, 3072) and batch["data"].dtype == np.uint8
    assert _plain_load(folder / "batches.meta")["label_names"][0] == "class_000"
    with pytest.raises(UserError, match="hold 7 images of class 0.*exactly 5000"):
        prepare_cifar("cifar10", root, tmp_path / "o")


def test_refuses_a_used_out_folder(raw100: Path, lt100: Path, tmp_path: Path) -> None:
    out = tmp_path / "used"
    shutil.copytree(lt100, out)
    before = _digest(out)
    with pytest.raises(UserError, match="--overwrite"):
        prepare_cifar("cifar100", raw100, out, imbalance_factor=10)
    assert _digest(out) == before
    m = prepare_cifar("cifar100", raw100, out, imbalance_factor=10, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["name"] == m.name
    assert m.name == "cifar100-lt-ir10-exp-seed0"
