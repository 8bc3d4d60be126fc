"""Training throughput of the device-resident pipeline with augmentation policies on.

ResNet-32 on CIFAR-100-LT-shaped data (random uint8 images, the 10,847 long-tailed labels of
IF 100), batch 128, lwr's engine (`build_components` + `Trainer.train_step` over the device
loader; bench_train.py's runner), once per variant. A variant is a name and `--set`
overrides; the first is the baseline every ratio is against. Defaults: plain crop + flip,
and + RandAugment (N 2, M 9). Add variants with any config key, e.g. mixup:

    python benchmarks/bench_augment.py --variant plain: \\
        --variant randaugment:data.augment=randaugment \\
        --variant ra+mixup:data.augment=randaugment,mixing.mixup_alpha=1

Each variant is built and warmed up first; then `--repeats` rounds time `--steps` steps of
every variant in a rotated order, so machine noise hits all of them. Reported: median
images/s over rounds, its ratio to the baseline, and the loader alone (batches drawn and
augmented, no model) in images/s.

    python benchmarks/bench_augment.py [--steps 8] [--repeats 3] [--out bench_augment.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_train import PRESET, lwr_runner, timed, write_dataset

from lwrcli.config import load_config
from lwrcli.data.loading import build_data
from lwrcli.data.profiles import long_tailed_counts

DEFAULT_VARIANTS = ["plain:", "randaugment:data.augment=randaugment"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name:k=v,k=v' -> (name, ['k=v', 'k=v'])."""
    name, _, sets = text.partition(":")
    if not name:
        raise SystemExit(f"--variant needs NAME:key=value,..., got {text!r}")
    return name, [s for s in sets.split(",") if s]


def loader_runner(data_dir: Path, sets: list[str], batch: int) -> Callable[[], int]:
    """One call = one training batch drawn, augmented and normalised (no model)."""
    device = torch.device("cpu" if not torch.cuda.is_available() else "cuda")
    cfg = load_config(PRESET, overrides=[f"batch_size={batch}", "eval_every=0", *sets])
    loader = build_data(data_dir, cfg, device).train
    assert loader is not None
    it = iter(loader)

    def step() -> int:
        nonlocal it
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        return int(x.shape[0])

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=None, help="NAME:key=value,...")
    ap.add_argument("--steps", type=int, default=8, help="train steps per variant per round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all variants")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    variants = dict(parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS))
    started = time.perf_counter()
    counts = long_tailed_counts(500, 100, 100, "exp")  # CIFAR-100-LT IF 100: 10,847 images
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), counts)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    names = list(variants)
    rounds: dict[str, list[float]] = {n: [] for n in names}
    loader_rate: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), images, labels, counts)
        runners = {n: lwr_runner(Path(tmp), sets, args.batch)[0] for n, sets in variants.items()}
        for name, sets in variants.items():
            load = loader_runner(Path(tmp), sets, args.batch)
            load()
            loader_rate[name] = statistics.median(timed(load, 8 * args.steps) for _ in range(3))
        for step in runners.values():
            for _ in range(args.warmup):
                step()
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                rounds[name].append(timed(runners[name], args.steps))
            print(f"round {r + 1}/{args.repeats} done", flush=True)
    base = statistics.median(rounds[names[0]])
    rows = [
        {
            "variant": n,
            "sets": variants[n],
            "images_per_s": round(statistics.median(rounds[n]), 1),
            "ratio_to_baseline": round(statistics.median(rounds[n]) / base, 3),
            "rounds_images_per_s": [round(v, 1) for v in rounds[n]],
            "loader_only_images_per_s": round(loader_rate[n], 1),
        }
        for n in names
    ]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    result = {
        "machine": {
            "device": device or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
        },
        "batch": args.batch,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": rows,
    }
    print("| variant | train images/s | × baseline | loader alone images/s |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['variant']} | {row['images_per_s']:.0f} | {row['ratio_to_baseline']:.2f} | "
            f"{row['loader_only_images_per_s']:.0f} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
