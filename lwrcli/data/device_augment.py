"""RandAugment, AutoAugment and TrivialAugment on uint8 batches resident on the device.

torchvision's policies transform one image at a time and draw from torch's global RNG. Here
every image of a batch draws its own ops, signs, magnitude bins and (AutoAugment) sub-policy
and application coins from the loader's `torch.Generator`, whose state is checkpointed, so a
resumed run replays the same augmentation. Nothing loops over images in Python and nothing
waits on the device: each op slot computes every candidate op on the whole batch (one
grid_sample for all the geometric ops, with a per-image matrix; colour ops with per-image
factors) and each image keeps the result of the op it drew. Static shapes, no host syncs.

Each op reproduces torchvision.transforms.v2.functional on a single uint8 image with the same
magnitude (nearest interpolation, zero fill, as the v2 policies use by default); the
magnitude tables are torchvision's (float32 linspace, read back as Python floats), and
tests/test_device_augment.py checks every op and bin against torchvision's per-image result.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from lwrcli.config import DataConfig

# Every op any of the three policies uses; an image's drawn op is an index into this tuple.
OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
OP = {name: i for i, name in enumerate(OPS)}
# Ops whose magnitude takes a random sign (torchvision's `signed`).
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate") + (
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
)
# RandAugment and TrivialAugmentWide draw uniformly among these 14 (AutoAugment adds Invert).
RAND_OPS = OPS[:14]
POLICIES = ("randaugment", "autoaugment", "trivialaugment")
NUM_BINS = 31  # RandAugment's and TrivialAugmentWide's num_magnitude_bins
AUTO_BINS = 10  # AutoAugment's magnitude bins

# AutoAugment's learned sub-policies, (op, probability, bin) pairs, as torchvision lists them.
AUTOAUGMENT_POLICIES: dict[str, list[tuple[tuple[str, float, int | None], ...]]] = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ],
    "cifar10": [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ],
}


def magnitude_table(wide: bool, num_bins: int, height: int, width: int) -> torch.Tensor:
    """float64 (len(OPS), num_bins): each op's unsigned magnitude per bin (0 for ops without
    one). torchvision's spaces: the standard one (RandAugment, AutoAugment) or TrivialAugment's
    wide one, computed in float32 as torchvision does, then widened exactly."""
    n = num_bins
    table = torch.zeros(len(OPS), n, dtype=torch.float64)

    def lin(end: float) -> torch.Tensor:
        return torch.linspace(0.0, end, n).double()

    shear, color, rotate = (0.99, 0.99, 135.0) if wide else (0.3, 0.9, 30.0)
    table[OP["ShearX"]] = table[OP["ShearY"]] = lin(shear)
    table[OP["TranslateX"]] = lin(32.0 if wide else 150.0 / 331.0 * width)
    table[OP["TranslateY"]] = lin(32.0 if wide else 150.0 / 331.0 * height)
    table[OP["Rotate"]] = lin(rotate)
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        table[OP[name]] = lin(color)
    levels = 6 if wide else 4
    table[OP["Posterize"]] = (8 - (torch.arange(n) / ((n - 1) / levels))).round().int().double()
    table[OP["Solarize"]] = torch.linspace(1.0, 0.0, n).double()
    return table


@dataclass(frozen=True)
class AugmentPolicy:
    """Which policy and its settings: `randaugment` (num_ops ops at bin `magnitude` of 31),
    `trivialaugment` (TrivialAugmentWide: one op, a uniform bin of 31), `autoaugment` (a
    uniform sub-policy of `autoaugment_policy`'s 25; each of its two ops applied with its
    probability)."""

    kind: str
    num_ops: int = 2
    magnitude: int = 9
    autoaugment_policy: str = "cifar10"

    @property
    def slots(self) -> int:
        """Ops applied in sequence to every image."""
        return {"randaugment": self.num_ops, "autoaugment": 2, "trivialaugment": 1}[self.kind]

    def draw(
        self, b: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image op ids (b, slots) int64 and signed magnitudes (b, slots) float64, drawn
        from `generator` in a fixed order (op choice, bins, application coins, signs). An op
        not applied (AutoAugment's coin) is Identity."""
        s = self.slots
        t = _tables(self.kind, self.autoaugment_policy, height, width, device)
        if self.kind == "autoaugment":
            sub = torch.randint(0, len(t.ids), (b,), device=device, generator=generator)
            op, bin_ = t.ids[sub], t.bins[sub]
            # torchvision applies an op when rand() <= p (float32 p, as here).
            coin = torch.rand(b, s, device=device, generator=generator) <= t.probs[sub]
            op = torch.where(coin, op, torch.zeros_like(op))
        else:
            op = torch.randint(0, len(RAND_OPS), (b, s), device=device, generator=generator)
            if self.kind == "trivialaugment":
                bin_ = torch.randint(0, NUM_BINS, (b, s), device=device, generator=generator)
            else:
                bin_ = torch.full((b, s), self.magnitude, device=device)
        flip = torch.rand(b, s, device=device, generator=generator) <= 0.5
        table, signed = t.table, t.signed
        mag = table[op, bin_]
        mag = torch.where(signed[op] & flip, -mag, mag)
        return op, mag

    def __call__(
        self, images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor
    ) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> uint8 (B, 3, H, W): every slot's drawn op, in order."""
        for k in range(op.shape[1]):
            images = apply_ops(images, op[:, k], magnitude[:, k])
        return images


@dataclass(frozen=True)
class _Tables:
    table: torch.Tensor  # (len(OPS), bins) float64 magnitudes
    signed: torch.Tensor  # (len(OPS),) bool
    ids: torch.Tensor  # AutoAugment: (25, 2) op ids, probabilities, bins
    probs: torch.Tensor
    bins: torch.Tensor


@functools.lru_cache(maxsize=16)
def _tables(kind: str, aa: str, height: int, width: int, device: torch.device) -> _Tables:
    """A policy's tables, made and moved to the device once (a copy from pageable host
    memory would wait for the device's queue at every batch)."""
    auto = kind == "autoaugment"
    table = magnitude_table(
        kind == "trivialaugment", AUTO_BINS if auto else NUM_BINS, height, width
    )
    pol = AUTOAUGMENT_POLICIES[aa]
    return _Tables(
        table.to(device),
        torch.tensor([name in SIGNED for name in OPS], device=device),
        torch.tensor([[OP[o] for o, _, _ in p] for p in pol], device=device),
        torch.tensor([[q for _, q, _ in p] for p in pol], device=device),
        torch.tensor([[k or 0 for _, _, k in p] for p in pol], device=device),
    )


def device_policy(cfg: DataConfig) -> AugmentPolicy | None:
    """The device pipeline's policy from `data.augment` (None for `none`); AutoAugment's
    `auto` policy is cifar10's here, the one searched on small images."""
    if cfg.augment == "none":
        return None
    aa = "cifar10" if cfg.autoaugment_policy == "auto" else cfg.autoaugment_policy
    return AugmentPolicy(cfg.augment, cfg.randaugment_ops, cfg.randaugment_magnitude, aa)


def _inverse_affine(op: torch.Tensor, mag: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) float32: torchvision's inverse affine matrix per image (its
    `_get_inverse_affine_matrix`, scale 1) for ShearX/Y (centre at the top-left corner),
    TranslateX/Y (whole pixels, truncated) and Rotate (about the centre); identity for every
    other op. float64 like torchvision's Python floats, then float32 like its theta."""
    zero = torch.zeros_like(mag)
    deg2rad, rad2deg = math.pi / 180.0, 180.0 / math.pi  # math.radians, math.degrees
    shear_x = torch.where(op == OP["ShearX"], torch.atan(mag) * rad2deg, zero) * deg2rad
    shear_y = torch.where(op == OP["ShearY"], torch.atan(mag) * rad2deg, zero) * deg2rad
    corner = (op == OP["ShearX"]) | (op == OP["ShearY"])
    cx = torch.where(corner, zero - width * 0.5, zero)
    cy = torch.where(corner, zero - height * 0.5, zero)
    tx = torch.where(op == OP["TranslateX"], torch.trunc(mag), zero)
    ty = torch.where(op == OP["TranslateY"], torch.trunc(mag), zero)
    # rotate(): angle % 360, then the matrix of -angle.
    rot = torch.where(op == OP["Rotate"], -torch.remainder(mag, 360.0), zero) * deg2rad
    cos_sy, tan_sx = torch.cos(shear_y), torch.tan(shear_x)
    a = torch.cos(rot - shear_y) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - shear_y) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3).float()


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of uint8 (B, C, H, W) by per-image inverse matrices (B, 2, 3),
    zero fill: torchvision's `_affine_grid` + `_apply_grid_transform`, batched."""
    b, _, h, w = images.shape
    dev = images.device
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=dev)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=dev))
    base[..., 1].copy_(
        torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=dev).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).clone()  # (B, 3, 2); scalars: no host-to-device copy
    rescaled[..., 0] /= 0.5 * w
    rescaled[..., 1] /= 0.5 * h
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(rescaled).view(b, h, w, 2)
    out = F.grid_sample(
        images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out.round_().to(images.dtype)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _geometric(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return _warp(x, _inverse_affine(op, mag, x.shape[-2], x.shape[-1]))


def _brightness(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return (x.float() * _per_image((1.0 + mag).float())).clamp_(0, 255).to(x.dtype)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Floored luma (B, 1, H, W) float32, torchvision's formula and operation order."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def _blend(x: torch.Tensor, other: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """x * f + other * (1 - f), f = 1 + mag per image; torchvision's _blend adds with alpha,
    a fused multiply-add, and addcmul fuses the same way."""
    f, rest = _per_image((1.0 + mag).float()), _per_image((-mag).float())
    return torch.addcmul(x.float() * f, other, rest).clamp_(0, 255).to(x.dtype)


def _color(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), mag)


def _contrast(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), mag)


def _sharpness(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Inner pixels blended with torchvision's rounded 3x3 smoothing (1s around a 5)."""
    out = x.float()
    a, c = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.full((3, 3), a, device=x.device)
    kernel[1, 1] = c
    blur = F.conv2d(out, kernel.expand(out.shape[1], 1, 3, 3), groups=out.shape[1]).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.addcmul_(blur.sub_(inner), _per_image((-mag).float()))  # fused, as add_(alpha=)
    return out.clamp_(0, 255).to(x.dtype)


def _posterize(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` bits: mask 256 - 2^(8 - bits) (255 for 8 bits, 0 for none)."""
    bits = torch.trunc(mag).clamp(0, 8)
    return x & _per_image((256 - torch.pow(2.0, 8 - bits)).to(torch.uint8))


def _solarize(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Invert pixels >= 255 * m, compared in float32 as torchvision does."""
    return torch.where(x.float() >= _per_image((255.0 * mag).float()), ~x, x)


# Each op's batched kernel: (uint8 (B, 3, H, W), op ids (B,), magnitudes (B,)) -> uint8.
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
KERNELS: dict[str, Kernel] = {
    **{name: _geometric for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")},
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda x, op, mag: TF.autocontrast(x),
    "Equalize": lambda x, op, mag: TF.equalize(x),
    "Invert": lambda x, op, mag: ~x,
}


def apply_ops(
    images: torch.Tensor,
    op: torch.Tensor,
    magnitude: torch.Tensor,
    subsets: bool | None = None,
) -> torch.Tensor:
    """One op per image: uint8 (B, 3, H, W), op ids (B,) int64, signed magnitudes (B,)
    float64 -> uint8 (B, 3, H, W). Every op works per image, so the result does not depend on
    how the batch is split: with `subsets` (default on CPU) each kernel runs on the images
    that drew it (finding them needs the op ids on the host, free on CPU); without (default
    on GPUs) each kernel runs on the whole batch and each image keeps its own op's result:
    static shapes, no host sync, no per-image Python."""
    if subsets is None:
        subsets = images.device.type == "cpu"
    out = images
    for names, kernel in GROUPS:
        mask = op == OP[names[0]]
        for name in names[1:]:
            mask = mask | (op == OP[name])
        if subsets:
            idx = mask.nonzero().squeeze(1)
            if len(idx):
                out = out.clone() if out is images else out
                out[idx] = kernel(images[idx], op[idx], magnitude[idx])
        else:
            out = torch.where(_per_image(mask), kernel(images, op, magnitude), out)
    return out


def _grouped(kernels: dict[str, Kernel]) -> list[tuple[tuple[str, ...], Kernel]]:
    """The ops that share one kernel (the geometric ones) as one group."""
    groups: dict[Kernel, list[str]] = {}
    for name, kernel in kernels.items():
        groups.setdefault(kernel, []).append(name)
    return [(tuple(names), kernel) for kernel, names in groups.items()]


GROUPS = _grouped(KERNELS)
