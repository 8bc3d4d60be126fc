"""Standard split lists: the real ones in shared/, and generated trees of real JPEGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SPLITS
from jpegtree import write_list_dataset

from lwrcli.data.listfile import (
    class_names_from_paths,
    describe_lists,
    parse_list,
    prepare_listfile,
)
from lwrcli.data.manifest import read_manifest
from lwrcli.errors import UserError


def test_places_lt_real_lists_whole_flow(tmp_path: Path) -> None:
    m = prepare_listfile(
        "places-lt",
        tmp_path / "raw",
        tmp_path / "out",
        split_dir=SPLITS / "Places_LT",
        verify=False,
        progress=False,
    )
    assert m.splits == {"train": 62500, "val": 7300, "test": 36500}
    assert m.num_classes == 365 and max(m.class_counts) == 4980 and min(m.class_counts) == 5
    assert [len(m.shot_groups[g]) for g in ("many", "medium", "few")] == [131, 163, 71]
    assert m.val_split == "val" and m.test_split == "test"
    assert m.class_names[0] == "airfield"
    raw = (SPLITS / "Places_LT" / "Places_LT_train.txt").read_text().splitlines()
    assert (tmp_path / "out" / "train.txt").read_text().splitlines() == [r.strip() for r in raw]


def test_describe_real_lists() -> None:
    stats = describe_lists(
        {s: SPLITS / "Places_LT" / f"Places_LT_{s}.txt" for s in ("train", "val", "test")}
    )
    assert stats["train"] == {
        "images": 62500,
        "classes": 365,
        "max_label": 364,
        "min_count": 5,
        "max_count": 4980,
    }
    assert stats["val"]["min_count"] == stats["val"]["max_count"] == 20
    assert stats["test"]["min_count"] == stats["test"]["max_count"] == 100


def test_list_format_details(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_bytes(b"a/x 1.jpg 1\r\n\n  b/..y.jpg   0  \r\n\n")
    paths, labels = parse_list(good)
    assert paths == ["a/x 1.jpg", "b/..y.jpg"] and labels.tolist() == [1, 0]
    for line, message in [
        ("C:\\data\\x.jpg 0", "absolute path"),
        ("\\\\server\\share\\x.jpg 0", "absolute path"),
        ("a\\..\\..\\x.jpg 0", "'..'"),
        ("a/x.jpg -1", "outside >= 0"),
    ]:
        bad = tmp_path / "bad.txt"
        bad.write_text("a/ok.jpg 0\n" + line + "\n")
        with pytest.raises(UserError, match=f"bad.txt:2: .*{message}"):
            parse_list(bad)
    # Names come from folders only when each class lives in one distinct folder.
    assert class_names_from_paths(["t/cat/1", "t/dog/2"], np.array([0, 1]), 2) == ["cat", "dog"]
    mixed = class_names_from_paths(["t/cat/1", "u/dog/2"], np.array([0, 0]), 1)
    assert mixed == ["class_0000"]


def test_imagenet_lt_val_and_test_lists() -> None:
    for name, per_class in (("val", 20), ("test", 50)):
        paths, labels = parse_list(SPLITS / "ImageNet_LT" / f"ImageNet_LT_{name}.txt", 1000)
        assert np.bincount(labels, minlength=1000).tolist() == [per_class] * 1000
        assert len(paths) == 1000 * per_class
    groups = (SPLITS / "ImageNet_LT" / "ImageNet_LT_shot_groups.tsv").read_text().split()
    assert groups.count("many") == 385 and groups.count("few") == 136


def test_inat_val_is_the_test_split(tmp_path: Path) -> None:
    paths, labels = parse_list(SPLITS / "iNaturalist18" / "iNaturalist18_val.txt")
    assert len(paths) == 24426 and len(np.unique(labels)) == 8142
    # Without the (unshipped) train list, prepare-data says what it needs.
    with pytest.raises(UserError, match="iNaturalist18_train.txt"):
        prepare_listfile(
            "inat2018", tmp_path, tmp_path / "o", split_dir=SPLITS / "iNaturalist18", verify=False
        )
    # With a train list (the val list stands in), val becomes the test split.
    m = prepare_listfile(
        "inat2018",
        tmp_path,
        tmp_path / "o",
        split_dir=SPLITS / "iNaturalist18",
        train_list=SPLITS / "iNaturalist18" / "iNaturalist18_val.txt",
        verify=False,
        progress=False,
    )
    assert m.test_split == "test" and m.val_split is None and m.splits["test"] == 24426
    assert any("val list is used as the test split" in n for n in m.notes)


def test_generated_jpegs_verified(tmp_path: Path) -> None:
    lists = write_list_dataset(tmp_path)
    m = prepare_listfile(
        "imagenet-lt",
        tmp_path / "images",
        tmp_path / "data",
        train_list=lists["train"],
        val_list=lists["val"],
        test_list=lists["test"],
        progress=False,
    )
    assert m.class_counts == [8, 7, 6, 5, 4, 3] and m.splits == {"train": 33, "val": 12, "test": 18}
    assert read_manifest(tmp_path / "data").image_root == str((tmp_path / "images").resolve())
    assert any("6 classes" in n for n in m.notes)


@pytest.mark.parametrize(
    "line, message",
    [
        ("train/c00/missing.jpg 0", "missing"),
        ("../outside.jpg 0", "'..'"),
        ("/etc/passwd 0", "absolute path"),
        ("train/c00/0000.jpg 99", "outside 0..5"),
        ("train/c00/0000.jpg", "expected 'relative/path label'"),
        ("train/c00/0000.jpg zero", "not an integer"),
    ],
)
def test_bad_lists(tmp_path: Path, line: str, message: str) -> None:
    lists = write_list_dataset(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text(lists["test"].read_text() + line + "\n")
    with pytest.raises(UserError, match=message) as err:
        if "99" in line:
            parse_list(bad, num_classes=6)
        else:
            prepare_listfile(
                "imagenet-lt",
                tmp_path / "images",
                tmp_path / "data",
                train_list=lists["train"],
                test_list=bad,
                progress=False,
            )
    if message == "missing":
        assert "1 of 52" in str(err.value) and "train/c00/missing.jpg" in str(err.value)
    assert not (tmp_path / "data").exists()


def test_cli_prepare_lists_and_refuse_used_out(lwr, tmp_path: Path) -> None:
    lists = write_list_dataset(tmp_path)
    args = [
        "prepare-data",
        "places-lt",
        "--root",
        tmp_path / "images",
        "--out",
        tmp_path / "d",
        "--train-list",
        lists["train"],
        "--val-list",
        lists["val"],
        "--test-list",
        lists["test"],
        "--benchmark",
    ]
    r = lwr(*args)
    assert r.code == 0, r.err
    assert "images_per_s" in r.err
    before = (tmp_path / "d" / "manifest.json").read_text()
    r = lwr(*args)
    assert r.code == 2 and "--overwrite" in r.err
    assert (tmp_path / "d" / "manifest.json").read_text() == before
    assert json.loads(before)["storage"] == "lists"
