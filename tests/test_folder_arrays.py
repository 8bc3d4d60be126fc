"""prepare-data folder stores small images as uint8 arrays, and training reads them on the
device-resident path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args
from PIL import Image

from lwrcli.config import load_config
from lwrcli.data.arrays import load_arrays
from lwrcli.data.device_loader import DeviceImageLoader
from lwrcli.data.folder import prepare_folder
from lwrcli.data.loading import build_data
from lwrcli.errors import UserError


def write_png_tree(
    root: Path, counts: list[int], sizes: list[tuple[int, int]], seed: int = 0
) -> dict[str, np.ndarray]:
    """root/cCC/iII.png of random pixels, (height, width) cycling through `sizes`; returns
    {relative path: HWC uint8 pixels} as written (PNG is lossless)."""
    rng = np.random.default_rng(seed)
    written: dict[str, np.ndarray] = {}
    k = 0
    for c, n in enumerate(counts):
        for i in range(n):
            h, w = sizes[k % len(sizes)]
            k += 1
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            rel = f"c{c:02d}/i{i:02d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            written[rel] = pixels
    return written


def _split(data: Path, split: str) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """(paths, labels) from the split list and (images, labels) from its arrays."""
    lines = (data / f"{split}.txt").read_text().splitlines()
    paths = [ln.rsplit(maxsplit=1)[0] for ln in lines]
    labels = [int(ln.rsplit(maxsplit=1)[1]) for ln in lines]
    images, arr_labels = load_arrays(data, split)
    return paths, labels, images.numpy(), arr_labels.numpy()


def test_28px_tree_is_stored_as_arrays_exactly(tmp_path: Path) -> None:
    written = write_png_tree(tmp_path / "raw", [9, 6, 4], [(28, 28)])
    (tmp_path / "raw" / "c01" / "broken.png").write_bytes(b"not a png")
    m = prepare_folder(
        tmp_path / "raw",
        tmp_path / "d",
        test_per_class=2,
        val_per_class=1,
        skip_bad=True,
        min_per_class=1,
    )
    assert m.storage == "arrays" and m.image_size == 28 and m.source == "folder"
    assert list(m.skipped) == ["c01/broken.png"]
    # 9/6/4 readable images; 2 test and 1 val per class held out -> train 6/3/1.
    assert m.splits == {"test": 6, "val": 3, "train": 10} and m.class_counts == [6, 3, 1]
    for split in ("train", "val", "test"):
        paths, labels, images, arr_labels = _split(tmp_path / "d", split)
        assert len(images) == m.splits[split] == len(paths)
        assert arr_labels.tolist() == labels
        assert all(p.startswith(f"c{lab:02d}/") for p, lab in zip(paths, labels))
        for p, img in zip(paths, images):
            assert np.array_equal(img, written[p].transpose(2, 0, 1)), p
    lists = prepare_folder(
        tmp_path / "raw",
        tmp_path / "e",
        test_per_class=2,
        skip_bad=True,
        storage="lists",
        min_per_class=1,
    )
    assert lists.storage == "lists" and not (tmp_path / "e" / "train.safetensors").exists()


def test_mixed_sizes_stay_lists_and_image_size_resizes(tmp_path: Path) -> None:
    sizes = [(20, 30), (40, 24), (16, 16), (33, 17)]
    written = write_png_tree(tmp_path / "raw", [5, 5], sizes)
    raw, few = tmp_path / "raw", 1  # 4 train images per class are enough here
    assert prepare_folder(raw, tmp_path / "d", test_per_class=1, min_per_class=few).storage == (
        "lists"
    )
    m = prepare_folder(raw, tmp_path / "e", test_per_class=1, min_per_class=few, image_size=16)
    assert m.storage == "arrays" and m.image_size == 16
    for split in ("train", "test"):
        paths, labels, images, arr_labels = _split(tmp_path / "e", split)
        assert arr_labels.tolist() == labels and images.shape[1:] == (3, 16, 16)
        for p, img in zip(paths, images):
            # Documented: centre crop of the shorter side, then bilinear resize to 16 x 16.
            px = written[p]
            h, w = px.shape[:2]
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            square = px[top : top + s, left : left + s]
            want = np.asarray(Image.fromarray(square).resize((16, 16), Image.BILINEAR))
            assert np.array_equal(img, want.transpose(2, 0, 1)), p
    with pytest.raises(UserError, match="one square size"):
        prepare_folder(raw, tmp_path / "f", test_per_class=1, min_per_class=few, storage="arrays")
    assert not (tmp_path / "f").exists()


def test_cli_image_size_and_training_uses_the_device_loader(lwr, tmp_path: Path) -> None:
    write_png_tree(tmp_path / "raw", [8, 5, 3], [(24, 40), (36, 36)])
    out = tmp_path / "d"
    r = lwr("prepare-data", "folder", "--root", tmp_path / "raw", "--out", out,
            "--image-size", 12, "--test-per-class", 1, "--min-per-class", 1)  # fmt: skip
    assert r.code == 0, r.err
    assert "12x12 uint8 arrays" in r.err
    r = lwr("prepare-data", "synthetic", "--out", tmp_path / "s", "--image-size", 12)
    assert r.code == 2 and "--image-size does not apply to source 'synthetic'" in r.err
    cfg = load_config("folder-bs-lwr", overrides=["batch_size=4"])
    data = build_data(out, cfg, torch.device("cpu"))
    assert isinstance(data.train, DeviceImageLoader)
    x, _ = next(iter(data.train))
    assert x.shape == (4, 3, 12, 12)


@pytest.mark.slow
def test_folder_preset_trains_without_dataset_override(lwr, tmp_path: Path) -> None:
    write_png_tree(tmp_path / "raw", [10, 6, 4], [(28, 28)])
    assert lwr("prepare-data", "folder", "--root", tmp_path / "raw", "--out", tmp_path / "d",
               "--test-per-class", 2, "--min-per-class", 1).code == 0  # fmt: skip
    sets = ("epochs=1", "batch_size=8", "model.name=small_cnn", "model.width=4")
    r = lwr(*train_args("folder-bs-lwr", tmp_path / "d", tmp_path / "run", *sets))
    assert r.code == 0, r.err
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
