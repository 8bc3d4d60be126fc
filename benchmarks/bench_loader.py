"""Large-image loader throughput: JPEG read + decode + ImageNet training transforms, images/s.

Generates a small ImageNet-like tree (500x375 JPEGs, as ImageNet's typical size), prepares it
with `prepare_folder`, and times `loader_benchmark` for each worker count. Tells a data
bottleneck from a compute one; compare with your GPU's training images/s.

Then the decoders alone on the same JPEGs (one thread): TorchCodec's `decode_image` against
torchvision.io's (deprecated since 0.29), and lwr's `decode_rgb` on each (which adds the EXIF
check, lwrcli/data/decode.py), in alternated rounds; the ratio is of the median seconds per
pass, measured in this one run, > 1 meaning TorchCodec is faster.

    python benchmarks/bench_loader.py [--images 256] [--workers 0,2] [--jitter 0.4]
                                      [--rounds 5] [--only loader|decode]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lwrcli.config import DataConfig
from lwrcli.data import decode
from lwrcli.data.folder import prepare_folder
from lwrcli.data.throughput import loader_benchmark


def jpeg_bytes(images: int) -> list[bytes]:
    """`images` generated 500x375 JPEGs (quality 90, about 130 KB each), encoded."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    out = []
    for i in range(images):
        # Halved noise plus an offset: JPEG sizes near real photos' (~100 KB), not noise's.
        img = np.roll(base, i * 7, axis=1) // 2 + (i * 13 % 128)
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_tree(root: Path, images: int, classes: int = 8) -> None:
    for i, data in enumerate(jpeg_bytes(images)):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(data)


def decoders() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The decoders to time, by name: the libraries' own calls and lwr's decode_rgb on each
    (LWR_DECODER picks its backend at each call)."""
    from torchvision.io import ImageReadMode, decode_image

    def torchvision_io(data: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(data, mode=ImageReadMode.RGB)

    def lwr(backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(data: torch.Tensor) -> torch.Tensor:
            os.environ[decode.DECODER_ENV] = backend
            return decode.decode_rgb(data)

        return run

    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"torchvision.io": torchvision_io}
    out["lwr decode_rgb (torchvision.io)"] = lwr("torchvision")
    if decode._torchcodec()[0] is not None:
        from torchcodec.decoders import decode_image as tc_decode_image

        out["torchcodec"] = lambda data: tc_decode_image(data, mode="RGB")
        out["lwr decode_rgb (torchcodec)"] = lwr("torchcodec")
    return out


def decode_benchmark(root: Path, rounds: int) -> dict:
    """Seconds per pass over every JPEG under `root` for each decoder, rounds alternated
    (a rotated order, so load on a shared machine falls on all alike); medians and ratios."""
    files = [decode.read_bytes(p) for p in sorted(root.rglob("*.jpg"))]
    fns = decoders()
    saved, threads = os.environ.get(decode.DECODER_ENV), torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker decodes on one thread
    times: dict[str, list[float]] = {name: [] for name in fns}
    try:
        for fn in fns.values():  # warm-up: library loading, first-call costs
            fn(files[0])
        names = list(fns)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                for data in files:
                    fns[name](data)
                times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop(decode.DECODER_ENV, None)
        else:
            os.environ[decode.DECODER_ENV] = saved
    median = {name: statistics.median(t) for name, t in times.items()}
    result: dict = {
        "images": len(files),
        "size": "500x375 JPEG",
        "rounds": rounds,
        "ms_per_image": {name: 1000 * m / len(files) for name, m in median.items()},
    }
    if "torchcodec" in median:
        result["torchcodec_vs_torchvision_io"] = median["torchvision.io"] / median["torchcodec"]
        result["lwr_torchcodec_vs_lwr_torchvision_io"] = (
            median["lwr decode_rgb (torchvision.io)"] / median["lwr decode_rgb (torchcodec)"]
        )
    else:
        result["torchcodec_vs_torchvision_io"] = None
        result["note"] = "torchcodec is not installed (or does not load): pip install torchcodec"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--jitter", type=float, default=0.4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds of the decoders")
    ap.add_argument("--only", choices=["loader", "decode"], help="one of the two parts")
    args = ap.parse_args()
    report: dict = {"image_size": 224, "color_jitter": args.jitter}
    with tempfile.TemporaryDirectory() as tmp:
        raw, data = Path(tmp) / "raw", Path(tmp) / "data"
        make_tree(raw, args.images)
        if args.only != "decode":
            prepare_folder(raw, data, test_per_class=1, min_per_class=1)
            cfg = DataConfig(
                color_jitter=args.jitter, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
            )
            rows = []
            for w in map(int, args.workers.split(",")):
                rows.append(loader_benchmark(data, cfg, "train", args.batch, 10, workers=w))
            report["rows"] = rows
            report["decoder"] = decode.decoder()
        if args.only != "loader":
            report["decode"] = dec = decode_benchmark(raw, args.rounds)
    print(json.dumps(report, indent=2))
    if args.only != "loader":
        ms = dec["ms_per_image"]
        if dec["torchcodec_vs_torchvision_io"] is None:
            print(f"TorchCodec: {dec['note']}")
        else:
            print(
                f"decode, {dec['images']} {dec['size']}s, median of {dec['rounds']} rounds: "
                f"TorchCodec {ms['torchcodec']:.2f} ms/image, torchvision.io "
                f"{ms['torchvision.io']:.2f} ms/image: TorchCodec is "
                f"{dec['torchcodec_vs_torchvision_io']:.2f}x torchvision.io's speed "
                f"(through lwr's decode_rgb: {dec['lwr_torchcodec_vs_lwr_torchvision_io']:.2f}x)"
            )


if __name__ == "__main__":
    main()
