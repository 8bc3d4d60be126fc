"""Standard split lists: the real ones shipped in the package, and generated trees of JPEGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jpegtree import write_list_dataset

from lwrcli.data.listfile import (
    class_names_from_paths,
    describe_lists,
    parse_list,
    prepare_listfile,
)
from lwrcli.data.manifest import read_manifest
from lwrcli.data.shipped import read_shipped, shipped_files, shipped_list
from lwrcli.errors import UserError


def test_places_lt_real_lists_whole_flow(tmp_path: Path) -> None:
    # No lists given: all three come from the copies shipped with lwr.
    m = prepare_listfile("places-lt", tmp_path / "raw", tmp_path / "out", verify=False)
    assert m.splits == {"train": 62500, "val": 7300, "test": 36500}
    assert m.num_classes == 365 and max(m.class_counts) == 4980 and min(m.class_counts) == 5
    assert [len(m.shot_groups[g]) for g in ("many", "medium", "few")] == [131, 163, 71]
    assert m.val_split == "val" and m.test_split == "test"
    assert m.class_names[0] == "airfield"
    raw = read_shipped("places-lt", "Places_LT_train.txt").splitlines()
    assert (tmp_path / "out" / "train.txt").read_text().splitlines() == [r.strip() for r in raw]
    assert "val list: shipped with lwr (Places_LT_val.txt)" in m.notes


# The published line counts (README of the splits: OLTR / decoupling / SADE releases).
PUBLISHED_LINES = {
    ("imagenet-lt", "ImageNet_LT_val.txt"): 20000,
    ("imagenet-lt", "ImageNet_LT_test.txt"): 50000,
    ("imagenet-lt", "ImageNet_LT_shot_groups.tsv"): 1 + 1000,  # a header, then one per class
    ("places-lt", "Places_LT_train.txt"): 62500,
    ("places-lt", "Places_LT_val.txt"): 7300,
    ("places-lt", "Places_LT_test.txt"): 36500,
    ("inat2018", "iNaturalist18_val.txt"): 24426,
}


def test_shipped_lists_decompress_to_the_published_line_counts() -> None:
    shipped = shipped_files()
    assert sorted(shipped) == sorted(name for _, name in PUBLISHED_LINES)
    for (source, name), lines in PUBLISHED_LINES.items():
        text = read_shipped(source, name)
        assert text.endswith("\n") and text.count("\n") == lines, name
    # gzip -n: no name or timestamp in the header, so the bytes are reproducible.
    for resource in shipped.values():
        assert resource.read_bytes()[4:8] == b"\0\0\0\0"
    assert shipped_list("imagenet-lt", "train") is None
    assert shipped_list("inat2018", "train") is None and shipped_list("inat2018", "test") is None


def test_describe_real_lists() -> None:
    stats = describe_lists({s: shipped_list("places-lt", s) for s in ("train", "val", "test")})
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
        paths, labels = parse_list(shipped_list("imagenet-lt", name), 1000)
        assert np.bincount(labels, minlength=1000).tolist() == [per_class] * 1000
        assert len(paths) == 1000 * per_class
    groups = read_shipped("imagenet-lt", "ImageNet_LT_shot_groups.tsv").split()
    assert groups.count("many") == 385 and groups.count("few") == 136


def test_inat_val_is_the_test_split(tmp_path: Path) -> None:
    paths, labels = parse_list(shipped_list("inat2018", "val"))
    assert len(paths) == 24426 and len(np.unique(labels)) == 8142
    # Without the (unshipped) train list, prepare-data says what it needs.
    with pytest.raises(UserError, match="iNaturalist18_train.txt.*--train-list"):
        prepare_listfile("inat2018", tmp_path, tmp_path / "o", verify=False)
    # With a train list (a gzip copy of the val list stands in), val becomes the test split.
    train = tmp_path / "iNaturalist18_train.txt.gz"
    train.write_bytes(shipped_list("inat2018", "val").read_bytes())
    m = prepare_listfile("inat2018", tmp_path, tmp_path / "o", train_list=train, verify=False)
    assert m.test_split == "test" and m.val_split is None and m.splits["test"] == 24426
    assert m.class_counts == np.bincount(labels).tolist()
    assert any("val list is used as the test split" in n for n in m.notes)
    assert "test list: shipped with lwr (iNaturalist18_val.txt)" in m.notes
    assert f"train list: {train.resolve()}" in m.notes


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
                val_list=lists["val"],
                test_list=bad,
                progress=False,
            )
    if message == "missing":
        assert "1 of 64" in str(err.value) and "train/c00/missing.jpg" in str(err.value)
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


def test_gzip_lists_parse_like_plain_ones(tmp_path: Path) -> None:
    import gzip

    lists = write_list_dataset(tmp_path)
    packed = tmp_path / "train.txt.gz"
    packed.write_bytes(gzip.compress(lists["train"].read_bytes()))
    plain_paths, plain_labels = parse_list(lists["train"])
    paths, labels = parse_list(packed)
    assert paths == plain_paths and labels.tolist() == plain_labels.tolist()
    packed.write_bytes(packed.read_bytes()[:-12])  # cut inside the gzip trailer
    with pytest.raises(UserError, match="not a complete gzip file"):
        parse_list(packed)
    (tmp_path / "latin.txt").write_bytes(b"a/ok.jpg 0\na/caf\xe9.jpg 1\n")
    with pytest.raises(UserError, match="latin.txt is not UTF-8 text"):
        parse_list(tmp_path / "latin.txt")


def test_cli_imagenet_lt_needs_only_the_train_list(lwr, tmp_path: Path) -> None:
    out = tmp_path / "d"
    r = lwr("prepare-data", "imagenet-lt", "--root", tmp_path, "--out", out, "--no-verify")
    assert r.code == 2 and "Traceback" not in r.err
    assert "ImageNet_LT_train.txt" in r.err and "--train-list PATH" in r.err
    assert "The val and test lists ship with lwr" in r.err
    assert not out.exists()
    # A train list of the first 5 images of each class (the shipped val list has train/ paths).
    per_class: dict[str, list[str]] = {}
    for line in read_shipped("imagenet-lt", "ImageNet_LT_val.txt").splitlines():
        per_class.setdefault(line.rsplit(maxsplit=1)[1], []).append(line)
    train = tmp_path / "my_train.txt"
    train.write_text("".join(f"{x}\n" for lines in per_class.values() for x in lines[:5]))
    r = lwr("prepare-data", "imagenet-lt", "--root", tmp_path, "--out", out, "--no-verify",
            "--train-list", train)  # fmt: skip
    assert r.code == 0, r.err
    m = read_manifest(out)
    assert m.splits == {"train": 5000, "val": 20000, "test": 50000}
    assert m.class_counts == [5] * 1000
    # The standard ImageNet names open_clip ships, in label order (not the folder wnids).
    assert m.class_names[0] == "tench" and m.class_names_source == "open_clip ImageNet class names"
    assert "val list: shipped with lwr (ImageNet_LT_val.txt)" in m.notes
    assert "test list: shipped with lwr (ImageNet_LT_test.txt)" in m.notes
    assert f"train list: {train.resolve()}" in m.notes
    assert (out / "test.txt").read_text() == read_shipped("imagenet-lt", "ImageNet_LT_test.txt")
    # A --split-dir that does not exist is an error, not a silent fallback to shipped lists.
    r = lwr("prepare-data", "imagenet-lt", "--root", tmp_path, "--out", tmp_path / "e",
            "--train-list", train, "--split-dir", tmp_path / "nope", "--no-verify")  # fmt: skip
    assert r.code == 2 and "is not a folder" in r.err and not (tmp_path / "e").exists()


def test_own_lists_under_a_standard_name_explain_the_shipped_ones(tmp_path: Path) -> None:
    lists = write_list_dataset(tmp_path)
    with pytest.raises(UserError, match="The val list shipped with lwr was used .*--val-list"):
        prepare_listfile(
            "imagenet-lt",
            tmp_path / "images",
            tmp_path / "data",
            train_list=lists["train"],
            test_list=lists["test"],
            progress=False,
        )
    assert not (tmp_path / "data").exists()
