"""Augmentation policies (RandAugment, AutoAugment, TrivialAugment) on both pipelines: every
batched device op equals torchvision's per-image result, draws follow each policy, and the
augmentation of a (seed, epoch, position) is the same after a resume."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from lwrcli.config import DataConfig, load_config
from lwrcli.data.device_augment import (
    AUTO_BINS,
    AUTOAUGMENT_POLICIES,
    NUM_BINS,
    OP,
    OPS,
    RAND_OPS,
    SIGNED,
    AugmentPolicy,
    apply_ops,
    device_policy,
    magnitude_table,
)
from lwrcli.data.device_loader import DeviceImageLoader
from lwrcli.data.image_loader import sample_seed, seeded
from lwrcli.data.transforms import policy_transform, train_transform
from lwrcli.errors import UserError

# torchvision applies one op to one image through this (private) method of its policies.
REFERENCE = v2.RandAugment()


def _torchvision(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    return REFERENCE._apply_image_or_video_transform(
        image, name, magnitude, interpolation=REFERENCE.interpolation, fill=REFERENCE._fill
    )


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images plus the edge cases: a low-contrast one and a constant one."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    if b >= 3:
        images[1] = images[1] // 8 + 100
        images[2] = 77
    return images


@pytest.mark.parametrize("wide", [False, True], ids=["standard", "wide"])
@pytest.mark.parametrize("name", OPS)
def test_every_op_and_bin_equals_torchvision_per_image(name: str, wide: bool) -> None:
    """Tolerance: none. Each op at a spread of magnitude bins (the ends, the default M = 9,
    TrivialAugment's 90 degrees at bin 20) and both signs, on square and non-square images,
    equals torchvision's uint8 result pixel for pixel (float32 arithmetic replayed in the
    same order, fused multiply-adds included)."""
    for h, w in ((32, 32), (20, 28)):
        images = _images(4, h, w)
        table = magnitude_table(wide, NUM_BINS, h, w)
        for k in (0, 1, 5, 9, 14, 20, 27, 30):
            for sign in (1.0, -1.0) if name in SIGNED else (1.0,):
                mag = sign * float(table[OP[name], k])
                op = torch.full((len(images),), OP[name])
                mags = torch.full((len(images),), mag, dtype=torch.float64)
                want = torch.stack([_torchvision(im, name, mag) for im in images])
                for subsets in (True, False):  # the CPU and the GPU way of batching
                    got = apply_ops(images, op, mags, subsets=subsets)
                    assert torch.equal(got, want), (name, k, sign, h, w, subsets)


def test_magnitude_tables_are_torchvisions() -> None:
    """Our tables against the policies' own spaces (float32 values read back as floats)."""
    h, w = 24, 40
    for cls, wide, bins in (
        (v2.RandAugment, False, NUM_BINS),
        (v2.TrivialAugmentWide, True, NUM_BINS),
        (v2.AutoAugment, False, AUTO_BINS),
    ):
        table = magnitude_table(wide, bins, h, w)
        for name, (fn, signed) in cls._AUGMENTATION_SPACE.items():
            assert (name in SIGNED) == signed
            values = fn(bins, h, w)
            if values is None:
                assert torch.all(table[OP[name]] == 0)
            else:
                assert [float(v) for v in values] == table[OP[name]].tolist(), name


def test_a_mixed_batch_equals_torchvision_op_by_op() -> None:
    """Each image its own drawn ops and signs over RandAugment's N slots: the batched result
    equals applying the same ops one image at a time with torchvision."""
    policy = AugmentPolicy("randaugment", num_ops=3, magnitude=14)
    images = _images(64, 32, 32, seed=3)
    g = torch.Generator().manual_seed(5)
    op, mag = policy.draw(64, 32, 32, g, images.device)
    got = policy(images, op, mag)
    static = images
    for k in range(3):
        static = apply_ops(static, op[:, k], mag[:, k], subsets=False)
    assert torch.equal(got, static)
    for i in range(64):
        want = images[i]
        for k in range(3):
            want = _torchvision(want, OPS[int(op[i, k])], float(mag[i, k]))
        assert torch.equal(got[i], want), i


def test_randaugment_draws_n_uniform_ops_at_magnitude_m() -> None:
    b = 14 * 400
    policy = AugmentPolicy("randaugment", num_ops=2, magnitude=9)
    op, mag = policy.draw(b, 32, 32, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert op.shape == mag.shape == (b, 2)
    assert int(op.max()) < len(RAND_OPS)  # Invert is AutoAugment's only
    counts = torch.bincount(op.flatten(), minlength=len(RAND_OPS)).double()
    expected = 2 * b / len(RAND_OPS)
    assert float(((counts - expected) ** 2 / expected).sum()) < 40  # chi2, 13 dof: p ~ 1e-4
    table = magnitude_table(False, NUM_BINS, 32, 32)
    assert torch.equal(mag.abs(), table[op, 9])
    signed = torch.tensor([OPS[i] in SIGNED for i in range(len(OPS))])[op]
    negative = (mag < 0)[signed].double().mean()
    assert 0.45 < float(negative) < 0.55
    assert not (mag < 0)[~signed].any()


def test_trivialaugment_draws_one_op_and_a_uniform_bin() -> None:
    policy = AugmentPolicy("trivialaugment")
    op, mag = policy.draw(4000, 32, 32, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert op.shape == (4000, 1)
    table = magnitude_table(True, NUM_BINS, 32, 32)
    rotate = op[:, 0] == OP["Rotate"]
    assert set((mag[rotate, 0].abs() / 4.5).round().long().tolist()) == set(range(NUM_BINS))
    assert (table[op[:, :1]] == mag.abs()[:, :, None]).any(-1).all()


@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_autoaugment_draws_whole_sub_policies_with_their_probabilities(name: str) -> None:
    policy = AugmentPolicy("autoaugment", autoaugment_policy=name)
    b = 20000
    op, mag = policy.draw(b, 32, 32, torch.Generator().manual_seed(2), torch.device("cpu"))
    table = magnitude_table(False, AUTO_BINS, 32, 32)
    subs = AUTOAUGMENT_POLICIES[name]
    # Every drawn pair is a sub-policy with some of its ops switched off (Identity).
    allowed = set()
    for (o1, _, _), (o2, _, _) in subs:
        for a in (0, OP[o1]):
            for c in (0, OP[o2]):
                allowed.add((a, c))
    assert {(int(a), int(c)) for a, c in op.tolist()} <= allowed
    on = op > 0
    assert (table[op] == mag.abs()[:, :, None]).any(-1)[on].all()
    # The first op of cifar10's "Invert 0.1 / Contrast 0.2" is rare, Equalize common.
    first = torch.bincount(op[:, 0], minlength=len(OPS)).double() / b
    want = torch.zeros(len(OPS), dtype=torch.float64)
    for (o1, p1, _), _ in subs:
        want[OP[o1]] += p1 / len(subs)
    want[0] = 1 - want[1:].sum()
    assert torch.allclose(first, want, atol=0.015)


def test_config_names_policies_and_refuses_bad_values() -> None:
    cfg = load_config("synthetic-lt-ce", overrides=["data.augment=randaugment"])
    policy = device_policy(cfg.data)
    assert policy == AugmentPolicy("randaugment", 2, 9, "cifar10")
    assert device_policy(DataConfig()) is None
    assert isinstance(policy_transform(DataConfig(augment="autoaugment")), v2.AutoAugment)
    assert policy_transform(DataConfig(augment="autoaugment")).policy.value == "imagenet"
    with pytest.raises(UserError, match="randaugment_magnitude"):
        load_config("synthetic-lt-ce", overrides=["data.randaugment_magnitude=31"])
    with pytest.raises(UserError, match="data.augment"):
        load_config("synthetic-lt-ce", overrides=["data.augment=augmix"])


@pytest.mark.parametrize("kind", ["randaugment", "autoaugment", "trivialaugment"])
def test_device_loader_resumes_the_same_augmentation_between_any_two_batches(kind: str) -> None:
    images = _images(23, 8, 8, seed=4)
    labels = torch.arange(23)
    policy = AugmentPolicy(kind)

    def make() -> DeviceImageLoader:
        return DeviceImageLoader(
            images, labels, 4, (0, 0, 0), (1, 1, 1), True, 2, True, seed=7, policy=policy
        )

    ref = make()
    expected = []
    for epoch in range(2):
        ref.set_epoch(epoch)
        expected += [x.clone() for x, _ in ref]
    plain = DeviceImageLoader(images, labels, 4, (0, 0, 0), (1, 1, 1), True, 2, True, seed=7)
    plain.set_epoch(0)
    assert any(not torch.equal(x, e) for (x, _), e in zip(plain, expected))  # it augments
    for cut in (1, 5, 9):
        run = make()
        run.set_epoch(0)
        it, got, epoch = iter(run), [], 0
        while len(got) < cut:
            try:
                got.append(next(it)[0])
            except StopIteration:
                epoch += 1
                run.set_epoch(epoch)
                it = iter(run)
        fresh = make()
        fresh.load_state_dict(run.state_dict())
        for e in range(epoch, 2):
            fresh.set_epoch(e)
            got += [x for x, _ in fresh]
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_image_pipeline_policy_is_seeded_per_sample() -> None:
    """The image loader's train transform carries the policy; the same (seed, epoch,
    position) gives the same image in any process, another position another one."""
    cfg = DataConfig(augment="randaugment", randaugment_magnitude=20, image_size=24)
    transform = train_transform(cfg)
    assert any(isinstance(t, v2.RandAugment) for t in transform.transforms)
    image = _images(1, 40, 48, seed=6)[0]
    a = seeded(transform, image, sample_seed(3, 1, 17))
    b = seeded(transform, image, sample_seed(3, 1, 17))
    assert torch.equal(a, b)
    others = [seeded(transform, image, sample_seed(3, 1, p)) for p in range(18, 24)]
    assert any(not torch.equal(a, o) for o in others)
