"""Large-image loader throughput: JPEG read + decode + ImageNet training transforms, images/s.

Generates a small ImageNet-like tree (500x375 JPEGs, as ImageNet's typical size), prepares it
with `prepare_folder`, and times `loader_benchmark` for each worker count. Tells a data
bottleneck from a compute one; compare with your GPU's training images/s.

    python benchmarks/bench_loader.py [--images 256] [--workers 0,2] [--jitter 0.4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lwrcli.config import DataConfig
from lwrcli.data.folder import prepare_folder
from lwrcli.data.throughput import loader_benchmark


def make_tree(root: Path, images: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for i in range(images):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Smooth-ish content so JPEG sizes are realistic (~100 KB), not pure noise.
        img = np.roll(base, i * 7, axis=1) // 2 + (i * 13 % 128)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--jitter", type=float, default=0.4)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw, data = Path(tmp) / "raw", Path(tmp) / "data"
        make_tree(raw, args.images)
        prepare_folder(raw, data, test_per_class=1, min_per_class=1)
        cfg = DataConfig(
            color_jitter=args.jitter, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
        )
        rows = []
        for w in map(int, args.workers.split(",")):
            rows.append(loader_benchmark(data, cfg, "train", args.batch, 10, workers=w))
    print(json.dumps({"image_size": 224, "color_jitter": args.jitter, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
