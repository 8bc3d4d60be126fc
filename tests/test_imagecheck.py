"""Broken images are caught by prepare-data (folder and list sources), or left out on request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jpegtree import write_image_folder, write_jpeg, write_list_dataset
from PIL import Image

from lwrcli.data.imagecheck import MISSING, check_image, name_some


def _truncate(path: Path) -> None:
    """Keep the first half: headers intact (PIL's verify() passes), scan cut short."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_check_image_reasons(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good, cut, text = tmp_path / "good.jpg", tmp_path / "cut.jpg", tmp_path / "x.png"
    write_jpeg(good, rng)
    write_jpeg(cut, rng)
    _truncate(cut)
    text.write_text("not a picture\n")
    Image.open(cut).verify()  # the header check alone would let it through
    assert check_image(good) is None
    assert check_image(cut).startswith("truncated")
    assert check_image(text).startswith("not an image")
    assert check_image(tmp_path / "gone.jpg") == MISSING
    bad = {f"{i}.jpg": "truncated" for i in range(23)}
    assert name_some(bad).endswith("19.jpg (truncated) and 3 more")


def _broken_tree(root: Path) -> tuple[str, str]:
    write_image_folder(root, [12, 12])
    _truncate(root / "class_00" / "img_003.jpg")
    (root / "class_01" / "x.png").write_text("not a picture\n")
    return "class_00/img_003.jpg", "class_01/x.png"


def test_cli_folder_with_broken_images(lwr, tmp_path: Path) -> None:
    cut, text = _broken_tree(tmp_path / "T")
    out = tmp_path / "O"
    args = ("prepare-data", "folder", "--root", tmp_path / "T", "--out", out, "--test-per-class", 2)
    r = lwr(*args)
    assert r.code == 2 and "Traceback" not in r.err
    assert "2 of 25 images" in r.err and f"{cut} (truncated" in r.err
    assert f"{text} (not an image" in r.err and "--skip-bad" in r.err
    assert not out.exists()
    r = lwr(*args, "--skip-bad")
    assert r.code == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["skipped"]) == [cut, text]
    assert manifest["skipped"][cut].startswith("truncated")
    listed = "".join((out / f"{s}.txt").read_text() for s in ("train", "test"))
    assert cut not in listed and text not in listed
    # Left out before the split: both classes keep 2 test images, the rest is train.
    assert manifest["class_counts"] == [9, 10] and manifest["splits"]["test"] == 4
    # --no-verify restores the old behaviour: nothing decoded, nothing left out.
    r = lwr(*args, "--no-verify", "--out", tmp_path / "P")  # the last --out counts
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "P" / "manifest.json").read_text())["skipped"] == {}
    r = lwr(*args, "--no-verify", "--skip-bad", "--overwrite")
    assert r.code == 2 and "drop --no-verify" in r.err


def test_cli_lists_with_broken_images(lwr, tmp_path: Path) -> None:
    lists = write_list_dataset(tmp_path)
    images = tmp_path / "images"
    _truncate(images / "val" / "c01" / "0001.jpg")
    (images / "test" / "c02" / "x.png").write_text("not a picture\n")
    with lists["test"].open("a") as f:
        f.write("test/c02/x.png 2\n")
    out = tmp_path / "O"
    args = ["prepare-data", "imagenet-lt", "--root", images, "--out", out]
    for split in ("train", "val", "test"):
        args += [f"--{split}-list", lists[split]]
    r = lwr(*args)
    assert r.code == 2 and "Traceback" not in r.err
    assert "2 of 64 images" in r.err and "val/c01/0001.jpg (truncated" in r.err
    assert "test/c02/x.png (not an image" in r.err
    assert not out.exists()
    r = lwr(*args, "--skip-bad")
    assert r.code == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["skipped"]) == ["test/c02/x.png", "val/c01/0001.jpg"]
    assert manifest["splits"] == {"train": 33, "val": 11, "test": 18}
    assert "val/c01/0001.jpg" not in (out / "val.txt").read_text()
    assert any("2 corrupt or unreadable images left out" in n for n in manifest["notes"])
    # A class whose only train image is broken cannot be kept.
    _truncate(images / "train" / "c05" / "0000.jpg")  # class 5 has 3 train images
    for i in (1, 2):
        (images / "train" / "c05" / f"{i:04d}.jpg").write_text("text\n")
    r = lwr(*args, "--skip-bad", "--overwrite")
    assert r.code == 2 and "1 classes have no image in the train split" in r.err
    assert "train/c05/0000.jpg (truncated" in r.err
    assert json.loads((out / "manifest.json").read_text()) == manifest  # kept as it was
