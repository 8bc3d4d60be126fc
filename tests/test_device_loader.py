"""The device-resident small-image pipeline against a per-sample reference."""

from __future__ import annotations

import numpy as np
import torch

from lwrcli.data.device_loader import DeviceImageLoader, random_crop_flip


def _reference_crop(img: np.ndarray, oy: int, ox: int, pad: int) -> np.ndarray:
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    return padded[:, oy : oy + img.shape[1], ox : ox + img.shape[2]]


def test_crop_and_flip_match_per_sample_reference() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 10), dtype=torch.uint8)
    g = torch.Generator().manual_seed(3)
    out = random_crop_flip(images, padding=2, flip=True, generator=g)
    # Replay the same draws to know each sample's offsets and flip.
    g2 = torch.Generator().manual_seed(3)
    oy = torch.randint(0, 5, (16,), generator=g2)
    ox = torch.randint(0, 5, (16,), generator=g2)
    flips = torch.rand(16, generator=g2) < 0.5
    for i in range(16):
        ref = _reference_crop(images[i].numpy(), int(oy[i]), int(ox[i]), 2)
        if flips[i]:
            ref = ref[:, :, ::-1]
        assert np.array_equal(out[i].numpy(), ref)
    assert out.dtype == torch.uint8


def test_loader_covers_every_sample_once_and_normalises() -> None:
    n = 37
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(n)
    loader = DeviceImageLoader(
        images, labels, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True, 0, False
    )
    seen = torch.cat([y for _, y in loader])
    assert len(loader) == 5 and sorted(seen.tolist()) == list(range(n))
    ev = DeviceImageLoader(images, labels, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), False)
    x, y = next(iter(ev))
    expected = (images[:10].double() / 255 - 0.5) / 0.25
    assert torch.allclose(x.double(), expected, atol=1e-5)
    assert torch.equal(y, labels[:10])


def test_shards_partition_the_epoch() -> None:
    """Global batches of 8 split over 2 processes: equal step counts (DDP needs them), every
    image exactly once, the last partial global batch (7) shared as 4 + 3."""
    n = 23
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    labels = torch.arange(n)
    shards = []
    for rank in range(2):
        loader = DeviceImageLoader(
            images, labels, 4, (0, 0, 0), (1, 1, 1), True, 0, False, seed=5, rank=rank, world_size=2
        )
        batches = [y.tolist() for _, y in loader]
        assert len(batches) == len(loader) == 3
        assert [len(b) for b in batches] == [4, 4, 4 - rank]
        shards.append([i for b in batches for i in b])
    assert sorted(shards[0] + shards[1]) == list(range(n))


def test_generator_state_replays_batches() -> None:
    images = torch.randint(0, 256, (20, 3, 6, 6), dtype=torch.uint8)
    labels = torch.arange(20)
    a = DeviceImageLoader(images, labels, 5, (0, 0, 0), (1, 1, 1), True, 2, True, seed=1)
    a.set_epoch(0)
    list(a)
    state = a.state_dict()
    a.set_epoch(1)
    first = [x for x, _ in a]
    b = DeviceImageLoader(images, labels, 5, (0, 0, 0), (1, 1, 1), True, 2, True, seed=99)
    b.load_state_dict(state)
    b.set_epoch(1)
    second = [x for x, _ in b]
    assert all(torch.equal(p, q) for p, q in zip(first, second, strict=True))


def test_state_inside_an_epoch_resumes_between_two_batches() -> None:
    """Stopping after any batch and restoring into a fresh loader continues with exactly the
    batches (images, augmentation, labels) an uninterrupted epoch would have produced."""
    images = torch.randint(0, 256, (23, 3, 6, 6), dtype=torch.uint8)
    labels = torch.arange(23)

    def make() -> DeviceImageLoader:
        return DeviceImageLoader(images, labels, 4, (0, 0, 0), (1, 1, 1), True, 2, True, seed=7)

    ref = make()
    expected = []
    for epoch in range(2):
        ref.set_epoch(epoch)
        expected += [(x.clone(), y.clone()) for x, y in ref]
    for cut in (1, 5, 6, 9):  # inside epoch 0, its last batch, inside epoch 1
        run = make()
        got, epoch, it = [], 0, None
        run.set_epoch(0)
        it = iter(run)
        while len(got) < cut:
            try:
                got.append(next(it))
            except StopIteration:
                epoch += 1
                run.set_epoch(epoch)
                it = iter(run)
        state = run.state_dict()
        fresh = make()
        fresh.load_state_dict(state)
        for e in range(epoch, 2):
            fresh.set_epoch(e)
            got += list(fresh)
        assert len(got) == len(expected)
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_array_resize_and_five_crops_match_torchvision() -> None:
    """Small images for a model made for larger inputs: bicubic upsampling on the device, and
    LIFT's five crops of the image upsampled to size + 24, against torchvision's own ops."""
    from torchvision.transforms.v2 import functional as TF

    from lwrcli.data.device_loader import DeviceImageLoader

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    plain = DeviceImageLoader(images, labels, 5, mean, std, train=False, resize=16)
    ((x, _),) = list(plain)
    up = TF.resize(images.float(), [16, 16], antialias=True)
    expected = (up.clamp(0, 255) / 255 - m) / s
    assert x.shape == (5, 3, 16, 16)
    assert torch.allclose(x, expected, atol=1e-4)

    tte = DeviceImageLoader(images, labels, 5, mean, std, train=False, resize=16, tte=True)
    ((x, _),) = list(tte)
    big = TF.resize(images.float(), [40, 40], antialias=True)
    crops = torch.stack(TF.five_crop(big.clamp(0, 255), [16, 16]), dim=1)
    assert x.shape == (5, 5, 3, 16, 16)
    assert torch.allclose(x, (crops / 255 - m.unsqueeze(1)) / s.unsqueeze(1), atol=1e-4)
    # Crop 0 is the top-left corner of the enlarged image, crop 4 its centre.
    centre = big.clamp(0, 255)[..., 12:28, 12:28] / 255
    assert torch.allclose(x[:, 4], (centre - m) / s, atol=1e-4)
