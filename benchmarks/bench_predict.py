"""`lwr predict` against `lwr eval`'s loader on the same JPEGs: images/s and their ratio.

Generates a folder of 500x375 JPEGs (ImageNet's typical size), prepares it with
`prepare_folder` (every image in the train split's list), and saves a small CNN checkpoint
that sees 224-px crops (resize 256, the ImageNet eval transform). Then, in one process on the
same device and worker count:
- eval: `build_image_loader` over the train split (read, decode, Resize + CenterCrop in workers),
  each batch normalised on the device and through the model — what `lwr eval` does;
- predict: `predict_images` on a list file naming the same images (the same work plus top-k
  and writing the CSV).
The ratio predict / eval should be about 1: predict adds nothing per image that eval lacks.

    python benchmarks/bench_predict.py [--images 2000] [--workers 2] [--device auto] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lwrcli.checkpoint.files import save_checkpoint
from lwrcli.config import load_config
from lwrcli.data.folder import prepare_folder
from lwrcli.data.image_loader import build_image_loader, to_device
from lwrcli.data.manifest import read_manifest
from lwrcli.models import build_model, classifier_key
from lwrcli.runtime.device import resolve_device
from lwrcli.use.predict import Options, predict_images

CLASSES = 8


def make_tree(root: Path, images: int) -> None:
    """images JPEGs of 500x375 in CLASSES folders, smooth-ish so sizes are realistic."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for i in range(images):
        folder = root / f"class_{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        img = np.roll(base, i * 7, axis=1) // 2 + (i * 13 % 128)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="up to 10,000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=2, help="passes of each, alternated")
    args = ap.parse_args()
    images = min(max(args.images, CLASSES), 10_000)
    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        make_tree(tmp / "raw", images)
        manifest = prepare_folder(
            tmp / "raw", tmp / "data", test_per_class=1, min_per_class=1, progress=False
        )
        sets = [f"data.num_workers={args.workers}", f"eval_batch_size={args.batch_size}",
                "model.name=small_cnn", "model.width=8", "data.image_size=224",
                "data.resize=256", "amp=none", "channels_last=false"]  # fmt: skip
        cfg = load_config("folder-bs-lwr", overrides=sets)
        model = build_model(cfg.model, manifest.num_classes).to(dev).eval()
        ckpt = tmp / "model.safetensors"
        save_checkpoint(ckpt, model, cfg, manifest.class_counts, manifest.class_names, 1, {},
                        classifier_key(model), extra={"dataset_storage": "lists"})  # fmt: skip
        rels = [
            ln.rsplit(maxsplit=1)[0]
            for ln in (tmp / "data/train.txt").read_text().split("\n")
            if ln
        ]
        listing = tmp / "raw" / "images.txt"
        listing.write_text("\n".join(rels) + "\n")

        def eval_pass() -> tuple[int, float]:
            loader = build_image_loader(tmp / "data", read_manifest(tmp / "data"), "train",
                                        cfg.data, args.batch_size, train=False, seed=0,
                                        device=dev, drop_last=False)  # fmt: skip
            start, n = time.perf_counter(), 0
            with torch.no_grad():
                for batch in loader:
                    x, _ = to_device(batch, dev)
                    model(x)
                    n += x.shape[0]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return n, n / (time.perf_counter() - start)

        # Alternate the two, best of each: the first pass over fresh files pays for the page
        # cache and worker start-up, which would otherwise favour whichever runs second.
        eval_rate, predict_rate = 0.0, 0.0
        for _ in range(args.repeat):
            n, rate = eval_pass()
            eval_rate = max(eval_rate, rate)
            opts = Options(device=args.device, workers=args.workers, batch_size=args.batch_size,
                           progress=False, overwrite=True)  # fmt: skip
            s = predict_images(ckpt, [listing], tmp / "preds.csv", opts)
            assert s["images"] == n, (s["images"], n)
            predict_rate = max(predict_rate, s["images_per_s"])
    result = {
        "images": n,
        "workers": args.workers,
        "device": str(dev),
        "cpu_threads": torch.get_num_threads(),
        "eval_loader_images_per_s": round(eval_rate, 1),
        "predict_images_per_s": predict_rate,
        "ratio_predict_over_eval": round(predict_rate / eval_rate, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
