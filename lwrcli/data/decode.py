"""Every image decode of lwr: file bytes -> uint8 (3, H, W) RGB, on the CPU or on a GPU.

The decoder is TorchCodec (`torchcodec.decoders`, the maintained successor of the image
decoders torchvision.io deprecates from 0.29) when it imports and decodes a probe image; else
torchvision.io (older torch, where TorchCodec >= 0.16, which needs torch >= 2.11, is absent).
`LWR_DECODER=torchvision` picks the fallback where both are there (a comparison, or a way
around a TorchCodec bug). PIL decodes what neither reads (BMP, TIFF, ...), so whatever
prepare-data's image check (a full PIL decode, data/imagecheck.py) accepts decodes here.

Both decoders give the same tensors (tests/test_decode.py), because lwr fixes what differs:
- RGB always: grayscale, palette, CMYK and alpha images are converted (alpha dropped);
- EXIF orientation NOT applied, as in the reference PIL pipelines and in prepare-data's
  small-image arrays: TorchCodec always applies it (JPEG, PNG, WebP; CPU and nvjpeg), so it
  is undone here, read from where and as TorchCodec reads it;
- 8 bits: a 16-bit PNG becomes uint8 as round(x / 257) (torchvision.io would return uint16);
- the first frame of an animated GIF or WebP (as PIL's convert), not (N, 3, H, W).
A file no decoder reads raises ImageDecodeError, with PIL's reason, on either decoder.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

DECODER_ENV = "LWR_DECODER"  # "torchvision" forces the fallback
ORIENTATION_TAG = 0x0112  # EXIF/TIFF Orientation, 1 (as stored) .. 8


class ImageDecodeError(ValueError):
    """A file that no decoder reads as an image: corrupt, truncated or not an image."""


def read_bytes(path: Path) -> torch.Tensor:
    """A file's bytes as uint8 (N,)."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


def decoder() -> str:
    """'torchcodec' or 'torchvision': which library decodes in this process."""
    return "torchcodec" if _codec() is not None else "torchvision"


def decode_rgb(data: torch.Tensor) -> torch.Tensor:
    """File bytes uint8 (N,) -> uint8 (3, H, W) RGB on the CPU (module docstring: the rules)."""
    tc = _codec()
    try:
        if tc is not None:
            image = _as_stored(tc.decode_image(data, mode="RGB"), data)
        else:
            image = _to_uint8(_torchvision_image(data))
        return image[0] if image.ndim == 4 else image
    except (RuntimeError, ValueError, ImportError):
        # A format it lacks (BMP, TIFF), a broken file, or a torchvision without decoders.
        return _decode_pil(data)


def decode_rgb_batch(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """File bytes of a batch -> uint8 (3, H, W) images on `device`. On CUDA the JPEGs go to
    nvjpeg in one call (TorchCodec's or torchvision's); everything else (PNG, a CMYK JPEG
    nvjpeg refuses, a batch it fails on) is decoded on the CPU by decode_rgb and moved."""
    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [i for i, d in enumerate(data) if _is_jpeg(d)] if device.type == "cuda" else []
    if jpegs:
        try:
            decoded = _jpegs_on_device([data[i] for i in jpegs], device)
            for i, image in zip(jpegs, decoded, strict=True):
                out[i] = image
        except (RuntimeError, ValueError, ImportError):
            pass  # the CPU path below decodes them one by one
    return [o if o is not None else decode_rgb(d).to(device) for o, d in zip(out, data)]


# --- the decoders --------------------------------------------------------------------------


def _codec() -> ModuleType | None:
    """torchcodec.decoders, or None where torchvision.io decodes (absent, or forced)."""
    if os.environ.get(DECODER_ENV, "").strip().lower() == "torchvision":
        return None
    return _torchcodec()[0]


@functools.cache
def _torchcodec() -> tuple[ModuleType | None, bool]:
    """(torchcodec.decoders, whether it applies EXIF orientation) when it imports and decodes
    a probe JPEG on the CPU, else (None, False): not installed, or built for another torch
    (its libraries then fail to load). The probe is stored 16 wide, 8 high, with orientation
    6 (shown turned clockwise): TorchCodec 0.17 returns it 8 wide, 16 high."""
    try:
        from torchcodec import decoders

        image = decoders.decode_jpeg(_probe_jpeg(), mode="RGB")
    except Exception:  # any failure to import or load means: use torchvision.io
        return None, False
    if tuple(image.shape) not in ((3, 8, 16), (3, 16, 8)):
        return None, False
    return decoders, tuple(image.shape) == (3, 16, 8)


def _probe_jpeg() -> torch.Tensor:
    """A 16x8 grey JPEG with EXIF orientation 6, as uint8 bytes (N,)."""
    from PIL import Image

    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (128, 128, 128)).save(buf, "JPEG", exif=exif.tobytes())
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _torchvision_image(data: torch.Tensor) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    with warnings.catch_warnings():
        # torchvision >= 0.29 announces the move to TorchCodec: this is the fallback for
        # when TorchCodec is not there, so the warning says nothing the user can act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(data, mode=ImageReadMode.RGB)


def _jpegs_on_device(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    tc = _codec()
    if tc is not None:
        images = tc.decode_jpeg(data, mode="RGB", device=device)
        return [_as_stored(im, d, cuda=True) for im, d in zip(images, data, strict=True)]
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_pil(data: torch.Tensor) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as exc:  # the same words whichever decoder tried first
        fmt = _sniff(data)
        if isinstance(exc, UnidentifiedImageError):
            if fmt is None:
                raise ImageDecodeError("not an image in a format lwr reads") from None
            raise ImageDecodeError(f"corrupt or truncated {fmt} (no readable header)") from None
        text = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        raise ImageDecodeError(f"corrupt or truncated {fmt or 'image'} ({text})") from None
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def _sniff(data: torch.Tensor) -> str | None:
    """The format a file's first bytes announce (of those TorchCodec reads), else None."""
    head = data[:12].numpy().tobytes()
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:4] == b"GIF8":
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """uint16 (16-bit PNG) -> uint8 the way TorchCodec converts: round(x / 257)."""
    if image.dtype == torch.uint8:
        return image
    return (image.to(torch.float32) / 257).round_().clamp_(0, 255).to(torch.uint8)


def _is_jpeg(data: torch.Tensor) -> bool:
    return _sniff(data) == "JPEG"


# --- EXIF orientation ----------------------------------------------------------------------
# TorchCodec reads the orientation with its port of OpenCV's EXIF reader (torchvision's
# before it): from the first APP1 segment of a JPEG on the CPU, the first APP1 that starts
# with "Exif\0\0" under nvjpeg, the first eXIf chunk before a PNG's image data, the first
# EXIF chunk of a WebP. What follows reads it from the same place in the same way, by
# walking the container's headers (microseconds: the pixel data is not scanned).


def _orientation(data: torch.Tensor, cuda: bool = False) -> int:
    """The EXIF orientation TorchCodec applies to this file (1..8; else it applies none)."""
    b = memoryview(data.numpy())
    fmt = _sniff(data)
    if fmt == "JPEG":
        tiff = _jpeg_exif(b, cuda)
    elif fmt == "PNG":
        tiff = _png_exif(b)
    elif fmt == "WebP":
        tiff = _webp_exif(b)
    else:
        return -1
    return _tiff_orientation(tiff) if tiff else -1


def _jpeg_exif(b: memoryview, cuda: bool) -> bytes | None:
    n, pos = len(b), 2
    while pos + 4 <= n and b[pos] == 0xFF:
        marker = b[pos + 1]
        if marker == 0xFF and not cuda:  # a fill byte, which libjpeg skips
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no metadata after
            return None
        length = (b[pos + 2] << 8) | b[pos + 3]  # counts its own 2 bytes
        if length < 2 or pos + 2 + length > n:
            return None
        if marker == 0xE1:
            payload = b[pos + 4 : pos + 2 + length]
            if not cuda:  # the first APP1 whatever it holds; 6 bytes skipped unchecked
                return payload[6:].tobytes()
            if payload[:6].tobytes() == b"Exif\x00\x00":
                return payload[6:].tobytes()
        pos += 2 + length
    return None


def _png_exif(b: memoryview) -> bytes | None:
    n, pos = len(b), 8
    while pos + 8 <= n:
        length = int.from_bytes(b[pos : pos + 4], "big")
        kind = b[pos + 4 : pos + 8].tobytes()
        if kind == b"eXIf":
            return b[pos + 8 : pos + 8 + length].tobytes()
        if kind in (b"IDAT", b"IEND"):  # libpng reads eXIf before the image data only
            return None
        pos += 12 + length
    return None


def _webp_exif(b: memoryview) -> bytes | None:
    n, pos = len(b), 12
    while pos + 8 <= n:
        size = int.from_bytes(b[pos + 4 : pos + 8], "little")
        if size > n - pos - 8:
            return None
        if b[pos : pos + 4].tobytes() == b"EXIF":
            tiff = b[pos + 8 : pos + 8 + size].tobytes()
            return tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff
        pos += 8 + size + (size & 1)
    return None


def _tiff_orientation(t: bytes) -> int:
    """The Orientation entry of a TIFF block's first directory, as OpenCV's reader finds it
    (an offset or a count past the end reads as 0xFFFF); -1 when there is none."""
    n = len(t)
    order = "little" if n >= 1 and t[:1] == b"I" and (n == 1 or t[1:2] == b"I") else "big"

    def u16(at: int) -> int:
        return 0xFFFF if at + 1 >= n else int.from_bytes(t[at : at + 2], order)

    def u32(at: int) -> int:
        return 0xFFFF if at + 3 >= n else int.from_bytes(t[at : at + 4], order)

    if u16(2) != 0x2A:
        return -1
    at = u32(4)
    entries = u16(at)
    at += 2
    for _ in range(entries):
        tag = u16(at)
        if tag == 0xFFFF:
            break
        if tag == ORIENTATION_TAG:
            return u16(at + 8)
        at += 12
    return -1


def _as_stored(image: torch.Tensor, data: torch.Tensor, cuda: bool = False) -> torch.Tensor:
    """(..., 3, H, W) as TorchCodec oriented it -> as stored in the file. TorchCodec turns
    orientation o by: 2 flip W, 3 flip H and W, 4 flip H, 5 transpose, 6 transpose then flip
    W, 7 transpose then flip H and W, 8 transpose then flip H; undone here in reverse."""
    o = _orientation(data, cuda) if _torchcodec()[1] else -1
    if o not in range(2, 9):
        return image
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}
    if o in flips:
        image = image.flip(flips[o])
    if o >= 5:
        image = image.transpose(-2, -1)
    return image.contiguous()
