"""ImageFolder trees with long-tailed subsampling and held-out splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from jpegtree import write_image_folder, write_jpeg

from lwrcli.config import DataConfig
from lwrcli.data.folder import prepare_folder
from lwrcli.data.image_loader import build_image_loader, to_device
from lwrcli.data.manifest import read_manifest
from lwrcli.errors import UserError


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    write_image_folder(root, [60] * 5)
    return root


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _per_class(path: Path) -> list[int]:
    counts = Counter(int(line.rsplit(maxsplit=1)[1]) for line in _lines(path))
    return [counts[c] for c in range(max(counts) + 1)]


def test_long_tailed_with_balanced_val_and_test(tree: Path, tmp_path: Path) -> None:
    kw = dict(imbalance_factor=10, val_per_class=5, test_per_class=10)
    m = prepare_folder(tree, tmp_path / "d", seed=1, **kw)  # type: ignore[arg-type]
    # 60 - 10 test - 5 val = 45 left per class; exp profile: int(45 * 0.1 ** (c / 4)).
    want = [int(45 * 0.1 ** (c / 4)) for c in range(5)]
    assert want == [45, 25, 14, 8, 4]
    assert m.class_counts == want and _per_class(tmp_path / "d" / "train.txt") == want
    assert _per_class(tmp_path / "d" / "val.txt") == [5] * 5
    assert _per_class(tmp_path / "d" / "test.txt") == [10] * 5
    assert m.splits == {"test": 50, "val": 25, "train": sum(want)} and m.val_split == "val"
    assert m.imbalance_factor == 10 and m.profile == "exp" and m.seed == 1
    splits = {s: set(_lines(tmp_path / "d" / f"{s}.txt")) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])
    # Every line names a file of its own class folder.
    for lines in splits.values():
        for line in lines:
            rel, label = line.rsplit(maxsplit=1)
            assert rel.startswith(f"class_{int(label):02d}/") and (tree / rel).is_file()
    same = prepare_folder(tree, tmp_path / "e", seed=1, **kw)  # type: ignore[arg-type]
    assert same.fingerprint == m.fingerprint
    other = prepare_folder(tree, tmp_path / "f", seed=2, **kw)  # type: ignore[arg-type]
    assert other.fingerprint != m.fingerprint


def test_short_classes_keep_all_and_loader_reads_the_tree(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "raw", [30, 4, 12])
    m = prepare_folder(
        tmp_path / "raw", tmp_path / "d", imbalance_factor=5, test_per_class=2, min_per_class=2
    )
    # Left 28, 2, 10; count order 0, 2, 1 gets int(28 * 0.2 ** (r / 2)) = 28, 12, 5: class 2
    # keeps its 10 and class 1 its 2 (--min-per-class 2 accepts so small a class).
    assert m.class_order == [0, 2, 1] and m.counts_before_profile == [28, 2, 10]
    assert m.class_counts == [28, 2, 10]
    assert any("fewer images than the exp profile" in n and "[1, 2]" in n for n in m.notes)
    cfg = DataConfig(image_size=16, resize=18, num_workers=0)
    loader = build_image_loader(tmp_path / "d", m, "test", cfg, 6, train=False, seed=0)
    x, y = to_device(next(iter(loader)), torch.device("cpu"))
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 2, 2]


def test_train_and_test_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                write_jpeg(tmp_path / "raw" / split / c / f"{i}.jpg", rng, (12, 12))
    write_jpeg(tmp_path / "raw" / "train" / "dog" / "sub" / "UPPER.JPG", rng, (12, 12))
    write_jpeg(tmp_path / "raw" / "train" / "dog" / ".thumbs" / "t.jpg", rng, (12, 12))
    (tmp_path / "raw" / "train" / "cat" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "raw" / "train" / "cat" / "notes.txt").write_text("x")
    m = prepare_folder(tmp_path / "raw", tmp_path / "d")
    assert m.class_names == ["cat", "dog"] and m.class_counts == [6, 7]
    assert m.splits["test"] == 4 and m.val_split is None  # a lone val/ folder is the test
    assert _lines(tmp_path / "d" / "test.txt")[0] == "val/cat/0.jpg 0"
    assert "train/dog/sub/UPPER.JPG 1" in _lines(tmp_path / "d" / "train.txt")
    # With both val/ and test/, val/ stays the validation split.
    write_jpeg(tmp_path / "raw" / "test" / "cat" / "0.jpg", rng, (12, 12))
    write_jpeg(tmp_path / "raw" / "test" / "dog" / "0.jpg", rng, (12, 12))
    m = prepare_folder(tmp_path / "raw", tmp_path / "e")
    assert m.splits == {"val": 4, "test": 2, "train": 13} and m.val_split == "val"
    with pytest.raises(UserError, match="Drop --val-per-class"):
        prepare_folder(tmp_path / "raw", tmp_path / "f", val_per_class=1)
    write_jpeg(tmp_path / "raw" / "test" / "cow" / "0.jpg", rng, (12, 12))
    with pytest.raises(UserError, match=r"differ from the train ones: extra \['cow'\]"):
        prepare_folder(tmp_path / "raw", tmp_path / "g")


def test_test_per_class_with_a_test_folder_is_refused(lwr, tmp_path: Path) -> None:
    """A tree with train/ and test/ (or a lone val/) has its test split: --test-per-class
    would be ignored, so it is refused by name, and the summary says which folder is used."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                write_jpeg(tmp_path / "raw" / split / c / f"{i}.jpg", rng, (12, 12))
    args = ["prepare-data", "folder", "--root", tmp_path / "raw", "--out", tmp_path / "d"]
    r = lwr(*args, "--test-per-class", "3")
    text = " ".join(r.err.split())
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert "its val/ folder is the test split" in text and "--test-per-class 3 would be" in text
    assert "Drop --test-per-class" in text and not (tmp_path / "d").exists()
    r = lwr(*args)
    assert r.code == 0, r.err
    assert "the tree's val/ folder is the test split" in " ".join(r.err.split())
    for c in ("cat", "dog"):
        write_jpeg(tmp_path / "raw" / "test" / c / "0.jpg", rng, (12, 12))
    args[-1] = tmp_path / "e"
    r = lwr(*args, "--test-per-class", "0")
    assert r.code == 2 and "its test/ folder is the test split" in " ".join(r.err.split())
    assert not (tmp_path / "e").exists()
    r = lwr(*args)
    assert r.code == 0, r.err
    assert "layout: train/ and val/ and test/ folders, used as the splits" in r.err


def test_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="leaves 0 to train on.*lower --test-per-class"):
        prepare_folder(tree, tmp_path / "a", test_per_class=60)
    with pytest.raises(UserError, match="no class sub-folders"):
        (tmp_path / "empty").mkdir()
        prepare_folder(tmp_path / "empty", tmp_path / "b")
    with pytest.raises(UserError, match="must be >= 1"):
        prepare_folder(tree, tmp_path / "b", imbalance_factor=0.1)
    outside = tmp_path / "outside.jpg"
    write_jpeg(outside, np.random.default_rng(0))
    link_root = tmp_path / "linked"
    write_image_folder(link_root, [3, 3])
    (link_root / "class_00" / "evil.jpg").symlink_to(outside)
    with pytest.raises(UserError, match="links outside"):
        prepare_folder(link_root, tmp_path / "c")
    (link_root / "class_00" / "evil.jpg").unlink()
    (link_root / "class_02").mkdir()
    with pytest.raises(UserError, match="class_02 has no images"):
        prepare_folder(link_root, tmp_path / "c")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep")
    with pytest.raises(UserError, match="not empty"):
        prepare_folder(tree, tmp_path / "used")
    assert (tmp_path / "used" / "x").read_text() == "keep"
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_profile_that_empties_classes_is_refused_with_the_fix(
    lwr, tree: Path, tmp_path: Path
) -> None:
    """5 x 60 images, 10 held out for test: n_max 50 and IF 100 leave the last class empty."""
    out = tmp_path / "d"
    args = ["prepare-data", "folder", "--root", tree, "--out", out, "--test-per-class", "10"]
    r = lwr(*args, "--imbalance-factor", "100")
    assert r.code == 2 and "Traceback" not in r.err, r.err
    text = " ".join(r.err.split())
    assert "0 training images for 1 of 5 classes" in text
    assert "--imbalance-factor 50 or less" in text and "--min-per-class 1" in text
    assert not out.exists()
    r = lwr(*args, "--imbalance-factor", "100", "--min-per-class", "1")
    assert r.code == 0, r.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["min_per_class"] == 1 and min(m["class_counts"]) == 1
    assert any("clipped at 1" in n for n in m["notes"])


def test_imbalance_factor_follows_the_count_order(lwr, tmp_path: Path) -> None:
    """An already long-tailed tree keeps its shape: the profile ranks classes by their count
    (ties by name), the head is the largest class, and class ids stay the folder order."""
    write_image_folder(tmp_path / "raw", [12, 30, 16, 40, 16])
    out = tmp_path / "d"
    r = lwr("prepare-data", "folder", "--root", tmp_path / "raw", "--out", out,
            "--test-per-class", "2", "--imbalance-factor", "10")  # fmt: skip
    assert r.code == 0, r.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["class_names"] == [f"class_{c:02d}" for c in range(5)]
    assert m["counts_before_profile"] == [10, 28, 14, 38, 14]
    assert m["class_order"] == [3, 1, 2, 4, 0]  # class_02 before class_04: a tie, by name
    ranked = [m["class_counts"][c] for c in m["class_order"]]
    # int(38 * 0.1 ** (r / 4)) = 38, 21, 12, 6, 3 by rank; alphabetical order gave class_00
    # all its 10 images and the largest class 6: [10, 21, 12, 6, 3].
    assert ranked == [38, 21, 12, 6, 3]
    assert all(a >= b for a, b in zip(ranked, ranked[1:]))
    assert _per_class(out / "train.txt") == m["class_counts"] == [3, 21, 12, 38, 6]
    text = " ".join(r.err.split())
    assert "applied in count order, largest class first, ties by name" in text
    assert "head 'class_03' (id 3, 38 images)" in text


def test_a_class_left_too_small_is_refused_with_the_numbers(lwr, tmp_path: Path) -> None:
    """12 images, 10 held out for test (the default) would train on 2: refused, with the
    numbers and the ways out; the defaults are printed when it goes through."""
    write_image_folder(tmp_path / "raw", [30, 20, 12])
    args = ["prepare-data", "folder", "--root", tmp_path / "raw", "--out", tmp_path / "d"]
    r = lwr(*args)
    text = " ".join(r.err.split())
    assert r.code == 2 and "Traceback" not in r.err, r.err
    assert "1 of 3 classes would keep fewer train images than the default minimum of 5" in text
    assert "'class_02' has 12 images; holding out 10 test per class leaves 2" in text
    assert "lower --test-per-class (at most 7 keeps 5)" in text
    assert "--min-per-class 2" in text and not (tmp_path / "d").exists()
    r = lwr(*args, "--val-per-class", "3", "--min-per-class", "4")
    text = " ".join(r.err.split())
    assert r.code == 2 and "than the minimum of 4 per class" in text
    assert "holding out 10 test + 3 val per class leaves 0" in text
    assert "at most 5 keeps 4" in text and "lower --val-per-class" in text
    r = lwr(*args, "--min-per-class", "2")
    assert r.code == 0, r.err
    m = read_manifest(tmp_path / "d")
    assert m.class_counts == [20, 10, 2] and m.min_per_class == 2
    text = " ".join(r.err.split())
    assert "per class held out of the tree (--test-per-class 10, the default" in text
    assert "at least 2 train images before any profile (--min-per-class 2, given)" in text
    assert "class ids follow the sorted folder names" in text
    args[-1] = tmp_path / "e"
    r = lwr(*args, "--test-per-class", "7")
    assert r.code == 0, r.err
    assert "(--min-per-class 5, the default)" in " ".join(r.err.split())
    assert read_manifest(tmp_path / "e").class_counts == [23, 13, 5]


def test_skip_bad_says_how_many_and_names_the_first(lwr, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "raw", [14, 14])
    for i in range(7):
        (tmp_path / "raw" / "class_01" / f"bad_{i}.png").write_text("not a picture\n")
    out = tmp_path / "d"
    r = lwr("prepare-data", "folder", "--root", tmp_path / "raw", "--out", out,
            "--test-per-class", "2", "--skip-bad")  # fmt: skip
    assert r.code == 0, r.err
    text = " ".join(r.err.split())
    assert "7 corrupt or unreadable images left out (--skip-bad)" in text
    assert "class_01/bad_0.png (not an image" in text and "and 2 more" in text
    assert "class_01/bad_5.png" not in text
    assert len(read_manifest(out).skipped) == 7


def test_skip_bad_count_for_list_sources(lwr, tmp_path: Path) -> None:
    from jpegtree import write_list_dataset

    lists = write_list_dataset(tmp_path / "raw", classes=3)
    (tmp_path / "raw" / "images" / "train" / "c00" / "0000.jpg").write_text("broken")
    r = lwr("prepare-data", "places-lt", "--root", tmp_path / "raw" / "images",
            "--out", tmp_path / "d", "--train-list", lists["train"], "--val-list", lists["val"],
            "--test-list", lists["test"], "--skip-bad")  # fmt: skip
    assert r.code == 0, r.err
    text = " ".join(r.err.split())
    assert "1 corrupt or unreadable images left out (--skip-bad): train/c00/0000.jpg" in text
