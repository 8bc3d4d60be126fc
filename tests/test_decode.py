"""lwrcli.data.decode: TorchCodec (the default) and the torchvision.io fallback decode the same
files to the same uint8 RGB tensors, as stored (EXIF orientation not applied), and a broken
file is the same ImageDecodeError on both. The reference is PIL's decode (`convert("RGB")`,
no EXIF transpose), an independent decoder."""

from __future__ import annotations

import io
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lwrcli.data import decode
from lwrcli.data.decode import ImageDecodeError, decode_rgb, decode_rgb_batch, decoder

TORCH = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
# TorchCodec >= 0.16 needs torch >= 2.11; `make test` installs it (the `decode` extra).
needs_torchcodec = pytest.mark.skipif(
    TORCH < (2, 11), reason="torchcodec (the `decode` extra) needs torch >= 2.11"
)


def _bytes(im: Image.Image, fmt: str, **kw: object) -> torch.Tensor:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _photo(h: int = 37, w: int = 53) -> np.ndarray:
    """(h, w, 3) uint8: smooth gradients plus noise, so JPEG has real detail to code."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w) + 64], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _files() -> dict[str, torch.Tensor]:
    """Encoded test images, each with a side of odd length (37 x 53), so a transposed or
    rotated result cannot pass as the stored one."""
    rgb = Image.fromarray(_photo())
    frames = [Image.fromarray(np.roll(_photo(), 9 * k, axis=1)).convert("P") for k in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "jpeg": _bytes(rgb, "JPEG", quality=90),
        "jpeg_444": _bytes(rgb, "JPEG", quality=95, subsampling=0),
        "jpeg_progressive": _bytes(rgb, "JPEG", progressive=True),
        "jpeg_gray": _bytes(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": _bytes(rgb.convert("CMYK"), "JPEG", quality=95),
        "jpeg_exif6": _bytes(rgb, "JPEG", exif=_exif(6)),
        "png": _bytes(rgb, "PNG"),
        "png_rgba": _bytes(rgb.convert("RGBA"), "PNG"),
        "png_palette": _bytes(rgb.convert("P"), "PNG"),
        "png_gray": _bytes(rgb.convert("L"), "PNG"),
        "png_exif8": _bytes(rgb, "PNG", exif=_exif(8)),
        "webp_exif3": _bytes(rgb, "WEBP", lossless=True, exif=_exif(3)),
        "gif_animated": torch.frombuffer(bytearray(gif.getvalue()), dtype=torch.uint8),
        "bmp": _bytes(rgb, "BMP"),  # neither library reads BMP: PIL's on both paths
    }


FILES = _files()


def _pil(data: torch.Tensor) -> torch.Tensor:
    """The independent reference: PIL, RGB, as stored (no EXIF transpose), first frame."""
    with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy())


@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch):
    """Decode through torchvision.io (what older torch, without TorchCodec, uses)."""

    def use(on: bool) -> None:
        if on:
            monkeypatch.setenv(decode.DECODER_ENV, "torchvision")
        else:
            monkeypatch.delenv(decode.DECODER_ENV, raising=False)

    yield use
    decode._torchcodec.cache_clear()


@needs_torchcodec
def test_torchcodec_is_the_default_decoder() -> None:
    # Fails (rather than skips) where the `decode` extra was left out on torch >= 2.11.
    assert decoder() == "torchcodec", "pip install -e '.[decode]' (torchcodec>=0.16)"
    assert decode._torchcodec()[1], "TorchCodec 0.17 applies EXIF orientation (probe)"


@needs_torchcodec
@pytest.mark.parametrize("name", sorted(FILES))
def test_both_decoders_give_the_same_tensor(name: str, fallback) -> None:
    data = FILES[name]
    fallback(False)
    assert decoder() == "torchcodec"
    default = decode_rgb(data)
    fallback(True)
    assert decoder() == "torchvision"
    old = decode_rgb(data)
    want = _pil(data)
    assert default.dtype == old.dtype == torch.uint8
    assert default.shape == old.shape == want.shape == (3, 37, 53)
    # Bit-identical, JPEG and CMYK included: TorchCodec, torchvision and PIL all decode JPEG
    # with libjpeg-turbo's default (islow) IDCT and fancy chroma upsampling, and convert CMYK
    # (Adobe, inverted) the same way. Where that stops holding, this test says so first.
    assert torch.equal(default, old) and torch.equal(default, want)


@needs_torchcodec
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_not_applied(fmt: str, orientation: int, fallback) -> None:
    """TorchCodec turns images by their EXIF tag; lwr undoes it, so both decoders give the
    pixels as stored, as the reference PIL pipelines do."""
    kw = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    data = _bytes(Image.fromarray(_photo()), fmt, exif=_exif(orientation), **kw)
    from torchcodec.decoders import decode_image

    turned = decode_image(data, mode="RGB")  # TorchCodec's own: shown upright
    assert turned.shape[1:] == ((53, 37) if orientation >= 5 else (37, 53))
    fallback(False)
    default = decode_rgb(data)
    fallback(True)
    assert torch.equal(default, decode_rgb(data)) and torch.equal(default, _pil(data))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _edge_cases() -> dict[str, tuple[torch.Tensor, tuple[int, int]]]:
    """Files whose EXIF block sits where TorchCodec's CPU reader does or does not look:
    (bytes, the (H, W) TorchCodec returns; stored: 37 x 53)."""
    rgb = Image.fromarray(_photo())
    jpeg = bytes(_bytes(rgb, "JPEG", exif=_exif(6)).numpy())
    xmp = _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")
    icc = _segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + bytes(64))
    png = bytes(_bytes(rgb, "PNG").numpy())
    iend = png.rindex(b"IEND") - 4
    tiff = _exif(6)
    tiff = tiff[6:] if tiff.startswith(b"Exif\x00\x00") else tiff
    as_tensor = lambda raw: torch.frombuffer(bytearray(raw), dtype=torch.uint8)  # noqa: E731
    return {
        # Its reader takes the first APP1 segment, whatever it holds (nvjpeg's looks on).
        "jpeg_xmp_before_exif": (as_tensor(jpeg[:2] + xmp + jpeg[2:]), (37, 53)),
        "jpeg_icc_before_exif": (as_tensor(jpeg[:2] + icc + jpeg[2:]), (53, 37)),
        # libpng reads eXIf before the image data only.
        "png_exif_after_idat": (
            as_tensor(png[:iend] + _png_chunk(b"eXIf", tiff) + png[iend:]),
            (37, 53),
        ),
    }


@needs_torchcodec
@pytest.mark.parametrize("name", sorted(_edge_cases()))
def test_exif_found_where_torchcodec_finds_it(name: str, fallback) -> None:
    from torchcodec.decoders import decode_image

    data, turned = _edge_cases()[name]
    assert tuple(decode_image(data, mode="RGB").shape[1:]) == turned
    fallback(False)
    default = decode_rgb(data)
    fallback(True)
    assert default.shape == (3, 37, 53) and torch.equal(default, decode_rgb(data))


@pytest.mark.parametrize("order", ["little", "big"])
def test_tiff_orientation_reader_agrees_with_pil(order: str) -> None:
    """The orientation reader (a port of TorchCodec's) on both byte orders, against PIL."""
    mark = b"II" if order == "little" else b"MM"

    def u(value: int, size: int) -> bytes:
        return value.to_bytes(size, order)

    other = u(0x010F, 2) + u(2, 2) + u(4, 4) + b"lwr\x00"  # Make, ASCII "lwr"
    for value in (1, 3, 6, 8):
        orient = u(0x0112, 2) + u(3, 2) + u(1, 4) + u(value, 2) + bytes(2)  # SHORT
        tiff = mark + u(42, 2) + u(8, 4) + u(2, 2) + other + orient + u(0, 4)
        pil = Image.Exif()
        pil.load(tiff)
        assert decode._tiff_orientation(tiff) == pil[0x0112] == value
    assert decode._tiff_orientation(b"not a tiff block") == -1
    assert decode._tiff_orientation(mark + u(42, 2) + u(400, 4)) == -1  # offset past the end


def test_16_bit_png_becomes_8_bit_on_both(fallback) -> None:
    """torchvision.io returns uint16 for a 16-bit PNG; lwr rounds x / 257 to uint8, as
    TorchCodec does, so the loader's /255 normalisation holds on either decoder."""
    gray16 = np.random.default_rng(1).integers(0, 65536, (37, 53), dtype=np.uint16)
    data = _bytes(Image.fromarray(gray16), "PNG")
    want = torch.from_numpy(np.round(gray16 / 257).astype(np.uint8)).expand(3, -1, -1)
    for forced in (False, True):
        fallback(forced)
        got = decode_rgb(data)
        assert got.dtype == torch.uint8 and torch.equal(got, want)


BROKEN = {
    "truncated_jpeg": FILES["jpeg"][: len(FILES["jpeg"]) // 2],
    "truncated_png": FILES["png"][:120],
    "jpeg_header_then_zeros": torch.cat([FILES["jpeg"][:40], torch.zeros(400, dtype=torch.uint8)]),
    "not_an_image": torch.frombuffer(bytearray(b"this is not an image" * 8), dtype=torch.uint8),
    "empty": torch.empty(0, dtype=torch.uint8),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_file_is_the_same_named_error_on_both(name: str, fallback) -> None:
    messages = []
    for forced in (False, True):
        fallback(forced)
        with pytest.raises(ImageDecodeError) as err:
            decode_rgb(BROKEN[name])
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert isinstance(err.value, ValueError)  # what the loaders already catch
    expected = {
        "truncated_jpeg": "corrupt or truncated JPEG (image file is truncated",
        "truncated_png": "corrupt or truncated PNG (",
        "jpeg_header_then_zeros": "corrupt or truncated JPEG (no readable header)",
        "not_an_image": "not an image in a format lwr reads",
        "empty": "not an image in a format lwr reads",
    }[name]
    assert messages[0].startswith(expected), messages[0]


@needs_torchcodec
@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_default_path_raises_no_deprecation_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """As `-W error::DeprecationWarning` around decoding: the default path does not touch
    torchvision.io's decoders (replaced here by ones that fail), which do warn."""
    import torchvision
    import torchvision.io

    if tuple(int(p) for p in torchvision.__version__.split(".")[:2]) >= (0, 29):
        with pytest.raises(DeprecationWarning):  # the check can fail: torchvision warns
            torchvision.io.decode_image(FILES["jpeg"])

    def gone(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("torchvision.io decoder called on the default path")

    monkeypatch.setattr(torchvision.io, "decode_image", gone)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", gone)
    for data in FILES.values():
        assert decode_rgb(data).shape == (3, 37, 53)
    assert decode_rgb_batch([FILES["jpeg"], FILES["png"]], torch.device("cpu"))[1].shape[0] == 3


def test_fallback_hides_torchvision_deprecation(fallback) -> None:
    fallback(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert decode_rgb(FILES["jpeg"]).shape == (3, 37, 53)


def test_without_torchcodec_torchvision_decodes(monkeypatch: pytest.MonkeyPatch, fallback) -> None:
    """Older torch: TorchCodec absent (or its libraries fail to load) -> torchvision.io."""
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # `import torchcodec` now fails
    decode._torchcodec.cache_clear()
    assert decode._torchcodec() == (None, False) and decoder() == "torchvision"
    assert torch.equal(decode_rgb(FILES["jpeg_exif6"]), _pil(FILES["jpeg_exif6"]))


def test_batch_on_cpu_is_decode_rgb() -> None:
    data = [FILES["jpeg"], FILES["png_palette"], FILES["jpeg_cmyk"]]
    got = decode_rgb_batch(data, torch.device("cpu"))
    assert all(torch.equal(g, decode_rgb(d)) for g, d in zip(got, data, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_batch_matches_cpu_on_both(fallback) -> None:
    cuda = torch.device("cuda")
    files = {n: FILES[n] for n in ["jpeg", "jpeg_gray", "jpeg_cmyk", "jpeg_exif6", "png"]}
    files |= {n: data for n, (data, _) in _edge_cases().items()}
    files["jpeg_progressive"] = FILES["jpeg_progressive"]
    out = {}
    for forced in (False, True):
        fallback(forced)
        out[forced] = decode_rgb_batch(list(files.values()), cuda)
    for i, (name, data) in enumerate(files.items()):
        cpu = decode_rgb(data).int()
        assert cpu.shape == (3, 37, 53)
        for forced in (False, True):
            got = out[forced][i]
            assert got.device.type == "cuda" and got.shape == cpu.shape, name
            # nvjpeg and libjpeg-turbo may round IDCT and chroma upsampling differently.
            assert (got.cpu().int() - cpu).abs().max() <= 8, name
