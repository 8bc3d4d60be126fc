"""The large-image loader on a tree of real JPEGs: pixels, shapes, order, shards, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from jpegtree import write_jpeg, write_list_dataset
from PIL import Image

from lwrcli.config import DataConfig
from lwrcli.data.image_loader import ListDataset, build_image_loader, to_device
from lwrcli.data.listfile import prepare_listfile
from lwrcli.data.manifest import read_manifest
from lwrcli.data.throughput import loader_benchmark
from lwrcli.data.transforms import decode_rgb, eval_transform, read_bytes
from lwrcli.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


def cfg(**kw: object) -> DataConfig:
    return DataConfig(mean=MEAN, std=STD, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 classes of 40x48 JPEGs: train 8,7,...,3 per class, val 2 and test 3 per class."""
    base = tmp_path_factory.mktemp("jpegs")
    lists = write_list_dataset(base)
    prepare_listfile(
        "imagenet-lt",
        base / "images",
        base / "data",
        train_list=lists["train"],
        val_list=lists["val"],
        test_list=lists["test"],
        progress=False,
    )
    return base / "data"


def _loader(data: Path, split: str, train: bool, data_cfg: DataConfig, **kw: object):
    return build_image_loader(data, read_manifest(data), split, data_cfg, train=train, **kw)


def _list(data: Path, split: str) -> list[tuple[str, int]]:
    rows = [line.rsplit(maxsplit=1) for line in (data / f"{split}.txt").read_text().splitlines()]
    return [(p, int(y)) for p, y in rows]


def test_eval_batches_match_numpy(tiny: Path) -> None:
    # resize 40 keeps the 40x48 images as they are; the centre crop takes columns 4..43.
    loader = _loader(
        tiny, "test", False, cfg(image_size=40, resize=40, num_workers=0), batch_size=5, seed=0
    )
    got = [to_device(b, CPU) for b in loader]
    x, y = torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])
    rows = _list(tiny, "test")
    assert [b[0].shape[0] for b in got] == [5, 5, 5, 3]  # evaluation keeps the last batch
    assert y.tolist() == [lab for _, lab in rows] and x.dtype == torch.float32
    root = Path(read_manifest(tiny).image_root)  # type: ignore[arg-type]
    pixels = np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p, _ in rows])
    want = (pixels[:, :, 4:44].astype(np.float64) / 255 - MEAN) / STD
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).double().numpy(), want, atol=1e-5)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches(tiny: Path, workers: int) -> None:
    data_cfg = cfg(image_size=32, resize=36, color_jitter=0.4, num_workers=workers)
    loader = _loader(tiny, "train", True, data_cfg, batch_size=4, seed=3)
    assert loader.persistent_workers == (workers > 0)
    epochs = []
    for epoch in (0, 0, 1):
        loader.sampler.set_epoch(epoch)
        epochs.append([to_device(b, CPU) for b in loader])
    first = epochs[0]
    assert len(first) == 33 // 4  # the partial last batch is dropped
    lo = (0 - np.array(MEAN)) / np.array(STD)
    hi = (1 - np.array(MEAN)) / np.array(STD)
    for x, y in first:
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        for ch in range(3):
            assert lo[ch] - 1e-5 <= x[:, ch].min() and x[:, ch].max() <= hi[ch] + 1e-5
    labels = [torch.cat([y for _, y in e]).tolist() for e in epochs]
    train_counts = np.bincount([lab for _, lab in _list(tiny, "train")], minlength=6)
    assert np.all(np.bincount(labels[0], minlength=6) <= train_counts)
    assert labels[0] == labels[1] and labels[0] != labels[2]  # order = f(seed, epoch)
    # Same seed, same epoch: the same augmentations (workers draw from streams derived from the
    # seed; without workers the process's seeded generator draws); another seed: others.
    torch.manual_seed(11)
    again = _loader(tiny, "train", True, data_cfg, batch_size=4, seed=3)
    once = to_device(next(iter(again)), CPU)[0]
    torch.manual_seed(11)
    again = _loader(tiny, "train", True, data_cfg, batch_size=4, seed=3)
    assert torch.equal(to_device(next(iter(again)), CPU)[0], once)
    if workers:
        assert torch.equal(once, first[0][0])
    other = _loader(tiny, "train", True, data_cfg, batch_size=4, seed=4)
    assert not torch.equal(to_device(next(iter(other)), CPU)[0], once)


def test_rank_shards(tiny: Path) -> None:
    data_cfg = cfg(image_size=32, resize=36, num_workers=0)
    n_test = 18
    train = [
        list(
            _loader(
                tiny, "train", True, data_cfg, batch_size=4, seed=0, rank=r, world_size=2
            ).sampler
        )
        for r in (0, 1)
    ]
    # Global batches of 8: 4 full ones (32 images), the last partial one (1) dropped.
    assert len(train[0]) == len(train[1]) == 16
    indices = [[i for i, _ in shard] for shard in train]
    assert len(set(indices[0]) | set(indices[1])) == 32  # no image twice
    one = list(_loader(tiny, "train", True, data_cfg, batch_size=8, seed=0).sampler)
    for k in range(4):  # each global batch is the one-process batch, split in two parts
        both = indices[0][4 * k : 4 * k + 4] + indices[1][4 * k : 4 * k + 4]
        assert both == [i for i, _ in one[8 * k : 8 * k + 8]]
    # Each image's augmentation seed depends on (seed, epoch, index) only, not on the rank.
    assert dict(train[0]) | dict(train[1]) == {i: sd for i, sd in one}
    test = [
        list(
            _loader(
                tiny, "test", False, data_cfg, batch_size=4, seed=0, rank=r, world_size=2
            ).sampler
        )
        for r in (0, 1)
    ]
    assert sorted(test[0] + test[1]) == list(range(n_test))  # each image exactly once


def test_grayscale_and_cmyk_become_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for mode in ("L", "CMYK"):
        path = tmp_path / f"{mode}.jpg"
        write_jpeg(path, rng, (16, 20), mode)
        image = decode_rgb(read_bytes(path))
        want = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).astype(int)
        assert image.shape == (3, 16, 20) and image.dtype == torch.uint8
        assert np.abs(image.numpy().astype(int) - want).max() <= 1


def test_unreadable_image_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    data = ListDataset(
        tmp_path,
        ["gone.jpg", "bad.jpg"],
        torch.tensor([0, 0]),
        eval_transform(cfg(image_size=8, resize=8)),
    )
    for i, name in enumerate(("gone.jpg", "bad.jpg")):
        with pytest.raises(UserError, match=f"Cannot read image .*{name}"):
            data[i]


def test_benchmark_cycles_a_small_split(tiny: Path) -> None:
    result = loader_benchmark(
        tiny,
        cfg(image_size=32, resize=36, num_workers=2),
        "train",
        batch_size=8,
        num_batches=6,
        workers=0,
    )
    assert result["images"] == 48 and result["workers"] == 0 and result["images_per_s"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_decode_matches_cpu(tiny: Path) -> None:
    cuda = torch.device("cuda")
    out = {}
    for gpu in (False, True):
        data_cfg = cfg(image_size=40, resize=40, num_workers=0, gpu_decode=gpu)
        loader = _loader(tiny, "test", False, data_cfg, batch_size=8, seed=0, device=cuda)
        got = [to_device(b, cuda) for b in loader]
        out[gpu] = torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])
    assert out[True][0].device.type == "cuda" and torch.equal(out[True][1], out[False][1])
    # nvjpeg and libjpeg-turbo may round chroma upsampling differently by a few levels.
    diff = (out[True][0] - out[False][0]).abs() * torch.tensor(STD, device=cuda).view(1, 3, 1, 1)
    assert diff.max().item() * 255 <= 8 and diff.mean().item() * 255 <= 1.5
