"""Training throughput, side by side in one process: an LDAM-DRW-style loop vs lwr's engine.

The reference is this script's own re-statement of what the LDAM-DRW training code does for
CIFAR-LT: a dataset that makes a PIL image per sample, RandomCrop(32, padding=4) +
RandomHorizontalFlip + ToTensor + Normalize, a DataLoader with 2 workers (shuffle), and a
step that runs the model, cross-entropy, zero_grad/backward/SGD step and, as that code does
each step, top-1/top-5 accuracy and `loss.item()`. lwr runs `build_components` +
`Trainer.train_step` over its device-resident loader (RAM on CPU) for the CE preset of
CIFAR-100-LT IF 100, under each speed setting. Same model (ResNet-32), batch 128, data
(random uint8 images with CIFAR-100-LT's 10,847 long-tailed labels), machine and process.

Every variant is built and warmed up first (the compile variant's first step, which
compiles, is timed and reported on its own); then `--repeats` rounds each time `--steps`
steps of every variant, in a rotated order, so machine noise hits all of them. Reported:
median images/s over rounds and its ratio to the reference's median. The reference's
workers may have up to 4 batches ready when its turn starts (prefetch), which slightly
favours it.

    python benchmarks/bench_train.py [--steps 16] [--repeats 3] [--out bench_train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from lwrcli.config import ModelConfig, load_config
from lwrcli.data.arrays import write_arrays
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import make_manifest, write_manifest
from lwrcli.data.profiles import long_tailed_counts
from lwrcli.models import build_model
from lwrcli.train.build import build_components
from lwrcli.train.engine import Trainer
from lwrcli.train.resolve import resolve_speed_settings, speed_summary

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # LDAM-DRW's CIFAR-100 values
PRESET = "cifar100-lt-ir100-ce"
# name -> --set overrides on the preset (which says auto for all speed settings).
VARIANTS: dict[str, list[str]] = {
    "fp32 (old defaults)": ["amp=none", "channels_last=false", "compile=false"],
    "defaults (auto)": [],
    "channels_last": ["amp=none", "channels_last=true", "compile=false"],
    "bf16": ["amp=bf16", "channels_last=false", "compile=false"],
    "bf16 + channels_last": ["amp=bf16", "channels_last=true", "compile=false"],
    "compile (+ auto)": ["compile=true"],
    # Batch-level mixing (lwrcli.methods.mixing) on top of the defaults: its cost per step.
    "defaults + mixup/CutMix": ["mixing.mixup_alpha=0.2", "mixing.cutmix_alpha=1.0"],
}


# --- the reference loop ------------------------------------------------------------------


class PerSamplePIL(Dataset):
    """HWC uint8 images; a PIL image per sample, as torchvision's CIFAR datasets do."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, tf: Callable[[Any], Any]):
        self.images, self.labels, self.tf = images, labels, tf

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def topk_correct(output: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    _, pred = output.topk(max(ks), 1, True, True)
    hit = pred.t().eq(target.view(1, -1))
    return [float(hit[:k].reshape(-1).float().sum()) for k in ks]


def reference_runner(
    images: np.ndarray, labels: np.ndarray, batch: int, workers: int
) -> Callable[[], int]:
    """One call = one training step of the reference loop; returns the batch size."""
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    loader = DataLoader(
        PerSamplePIL(images, labels, tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet32"), 100)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    model.train()
    batches: Iterator[Any] = iter(loader)
    meter = {"loss": 0.0, "top1": 0.0, "top5": 0.0}

    def step() -> int:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:  # next epoch
            batches = iter(loader)
            x, y = next(batches)
        output = model(x)
        loss = F.cross_entropy(output, y)
        top1, top5 = topk_correct(output, y, (1, 5))
        meter["loss"] += loss.item() * x.size(0)
        meter["top1"] += top1
        meter["top5"] += top5
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return int(y.shape[0])

    return step


# --- lwr's engine ------------------------------------------------------------------------


def write_dataset(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    counts: list[int],
    test_images: int = 256,
) -> None:
    """A prepared `arrays` dataset (as prepare-data writes it) of the generated images; its
    test split repeats the train images up to `test_images` (10,000 gives CIFAR's eval cost)."""
    nchw = images.transpose(0, 3, 1, 2)
    test = np.arange(test_images) % len(labels)
    splits = {
        "train": {"images": nchw, "labels": labels},
        "test": {"images": nchw[test], "labels": labels[test]},
    }
    fp, per_split = write_arrays(folder, splits)
    manifest = make_manifest(
        name="bench-cifar100-lt-shaped",
        source="cifar100",
        synthetic=True,
        storage="arrays",
        class_names=[f"c{c}" for c in range(len(counts))],
        class_counts=counts,
        splits={"train": len(labels), "test": test_images},
        image_size=32,
        fingerprint=fp,
        split_fingerprints=per_split,
    )
    write_manifest(folder, manifest)


def step_fn(trainer: Trainer, t: float = 10.0) -> Callable[[], int]:
    """One call = one Trainer.train_step over the trainer's own loader, epochs wrapping; t is
    past warm-up, so the lr is fixed. Returns the images stepped."""
    loader = trainer.data.train
    assert loader is not None
    trainer.model.train()
    batches: Iterator[Any] = iter(loader)
    done = 0

    def step() -> int:
        nonlocal batches, done
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        for transform in trainer.parts.batch_transforms:  # as Trainer.train_epoch does
            x, y = transform(x, y, 0, done)
        done += 1
        trainer.train_step(x, y, t, None)
        return int(y.shape[0])

    return step


def lwr_runner(data_dir: Path, sets: list[str], batch: int) -> tuple[Callable[[], int], str]:
    """One call = one Trainer.train_step over the device loader; also the settings used."""
    device = torch.device("cpu" if not torch.cuda.is_available() else "cuda")
    cfg = load_config(PRESET, overrides=[f"batch_size={batch}", "eval_every=0", *sets])
    cfg = resolve_speed_settings(cfg, device, "arrays")
    data = build_data(data_dir, cfg, device)
    parts = build_components(cfg, data, device)
    trainer = Trainer(cfg, parts, device, run_dir=None)
    step = step_fn(trainer)
    return step, speed_summary(cfg)


def timed(step: Callable[[], int], steps: int) -> float:
    """Images per second over `steps` steps."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    seen = sum(step() for _ in range(steps))
    sync()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16, help="steps per variant per round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all variants")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    ap.add_argument("--variants", default="all", help="comma-separated names, or all")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    started = time.perf_counter()
    counts = long_tailed_counts(500, 100, 100, "exp")  # CIFAR-100-LT IF 100: 10,847 images
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), counts)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    chosen = VARIANTS if args.variants == "all" else {
        k: VARIANTS[k] for k in args.variants.split(",")
    }  # fmt: skip
    runners: dict[str, Callable[[], int]] = {}
    settings: dict[str, str] = {"reference (LDAM-DRW-style)": "fp32, PIL + DataLoader"}
    first_step_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), images, labels, counts)
        runners["reference (LDAM-DRW-style)"] = reference_runner(
            images, labels, args.batch, args.workers
        )
        for name, sets in chosen.items():
            runners[name], settings[name] = lwr_runner(Path(tmp), sets, args.batch)
        for name, step in runners.items():
            t0 = time.perf_counter()
            step()  # the first step: compiles where compile is on
            first_step_s[name] = time.perf_counter() - t0
            for _ in range(args.warmup - 1):
                step()
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for r in range(args.repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                rounds[name].append(timed(runners[name], args.steps))
            print(f"round {r + 1}/{args.repeats} done", flush=True)
    ref = statistics.median(rounds["reference (LDAM-DRW-style)"])
    rows = []
    for name in names:
        med = statistics.median(rounds[name])
        rows.append(
            {
                "variant": name,
                "settings": settings[name],
                "images_per_s": round(med, 1),
                "ratio_to_reference": round(med / ref, 2),
                "rounds_images_per_s": [round(v, 1) for v in rounds[name]],
                "first_step_s": round(first_step_s[name], 2),
            }
        )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    result = {
        "machine": {
            "device": device or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "batch": args.batch,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "images": len(labels),
        "reference_workers": args.workers,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": rows,
    }
    print("| variant | settings | images/s | × reference | first step s |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['variant']} | {row['settings']} | {row['images_per_s']:.0f} | "
            f"{row['ratio_to_reference']:.2f} | {row['first_step_s']:.1f} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
