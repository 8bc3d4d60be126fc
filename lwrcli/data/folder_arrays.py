"""Small images of a folder tree as uint8 arrays, so training takes the device-resident path
(pad-crop + flip by tensor ops) instead of decoding files through DataLoader workers.

Square `size` x `size` images: an image whose sides differ is centre-cropped to a square of
its shorter side (nothing is padded, so no border of fill pixels enters training), then that
square is resized with PIL's bilinear filter (antialiased when shrinking) unless it already
has the size. Palette, grayscale, CMYK and RGBA images are converted to RGB first (alpha
dropped; lwrcli.data.decode, as the large-image loader decodes).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lwrcli.data.decode import ImageDecodeError, decode_rgb, read_bytes
from lwrcli.data.imagecheck import default_workers
from lwrcli.errors import UserError

# Without --image-size, a tree is stored as arrays when all its images share one square size
# no larger than this (CIFAR 32, MNIST-like 28, Tiny-ImageNet 64).
MAX_AUTO_SIZE = 64


def auto_array_size(root: Path, paths: list[str]) -> int | None:
    """The images' one square size when every image has it and it is <= MAX_AUTO_SIZE; else
    None (stop at the first image that does not fit: only headers are read)."""
    from PIL import Image

    size: tuple[int, int] | None = None
    for rel in paths:
        try:
            with Image.open(Path(root) / rel) as im:
                dims = im.size
        except Exception as exc:  # only reachable with --no-verify
            raise _unreadable(Path(root) / rel, exc) from None
        if size is None:
            size = dims
        if dims != size or dims[0] != dims[1] or dims[0] > MAX_AUTO_SIZE:
            return None
    return size[0] if size else None


def _unreadable(path: Path, exc: Exception) -> UserError:
    return UserError(
        f"{path} does not decode ({type(exc).__name__}: {exc}); run prepare-data with the "
        "image check (drop --no-verify) and --skip-bad to leave broken images out."
    )


def fit_square(path: Path, size: int) -> np.ndarray:
    """One image as (size, size, 3) uint8: RGB (decoded by lwrcli.data.decode, as the
    large-image loader decodes), centre crop of the shorter side, bilinear resize to size x
    size (skipped when the square already has that size)."""
    from PIL import Image

    try:
        rgb = decode_rgb(read_bytes(path))  # (3, H, W)
    except (ImageDecodeError, OSError) as exc:  # only reachable with --no-verify
        raise _unreadable(path, exc) from None
    im = Image.fromarray(rgb.permute(1, 2, 0).numpy())
    w, h = im.size
    s = min(w, h)
    if (w, h) != (s, s):
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    if s != size:
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def split_arrays(root: Path, per_class: list[list[str]], size: int) -> dict[str, np.ndarray]:
    """{'images': (N, 3, size, size) uint8, 'labels': (N,) int64} in the split list's order
    (class by class, sorted paths), decoded on a thread pool (PIL releases the GIL)."""
    paths = [Path(root) / p for ps in per_class for p in ps]
    labels = np.array([c for c, ps in enumerate(per_class) for _ in ps], dtype=np.int64)
    images = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(default_workers()) as pool:
        for i, arr in enumerate(pool.map(lambda p: fit_square(p, size), paths)):
            images[i] = arr.transpose(2, 0, 1)
    return {"images": images, "labels": labels}
