"""The cost of the frontier families (issue 25), as ratios to a plain ResNet-32 step measured in
the same run: each variant's seconds per training step over the seconds per step of the CE
recipe of CIFAR-100-LT IF 100 (ResNet-32, batch 128), on the same data, machine and process.

A variant is a preset of CIFAR-100-LT IF 100 plus `--set` overrides; it is built as a run is
(`build_data` with the methods' training loader, so the contrastive losses draw their
augmented views on the device pipeline, `build_components`, `Trainer.train_step`). Every
variant is warmed up first, then `--repeats` rounds time `--steps` steps of every variant in a
rotated order, so machine noise hits all of them; reported: the median seconds per step and
its ratio to the plain step's median, and the same with the fastest round (the ratio of
minima, robust to bursts of load from other processes on a shared machine). Data: random
uint8 images with CIFAR-100-LT's 10,847 long-tailed labels (bench_train.py's
`write_dataset`).

`--clock cpu` times the process's CPU time (time.process_time) instead of wall time; with
`--threads 1` that is each step's compute, which other processes' load on a shared machine
does not stretch (wall-clock rounds there varied tenfold).

Add a family by adding rows to VARIANTS (label, preset, overrides).

    python benchmarks/bench_frontier.py [--steps 4] [--repeats 3] [--batch 128] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import step_fn, write_dataset  # noqa: E402

from lwrcli.config import load_config  # noqa: E402
from lwrcli.data.loading import build_data  # noqa: E402
from lwrcli.data.profiles import long_tailed_counts  # noqa: E402
from lwrcli.train.build import build_components, train_loader_hook  # noqa: E402
from lwrcli.train.engine import Trainer  # noqa: E402
from lwrcli.train.resolve import resolve_config  # noqa: E402

BASELINE = "ResNet-32, CE (plain step)"
# (label, preset, --set overrides). The first row is the baseline every ratio divides by.
# LWR rows use θ = 0 so that the penalty has pairs to repel from the first step.
VARIANTS: list[tuple[str, str, list[str]]] = [
    (BASELINE, "cifar100-lt-ir100-ce", []),
    # Multi-expert family (lwrcli.models.experts, methods ride / sade / balpoe). The cost LWR
    # adds on K heads is the "+ LWR" row's ratio minus its family's; one head's for scale.
    ("ResNet-32, BS + LWR (one head)", "cifar100-lt-ir100-bs-lwr", ["lwr.theta=0.0"]),
    ("RIDE (3 reduced experts)", "cifar100-lt-ir100-ride", []),
    ("RIDE + LWR on the 3 experts' heads", "cifar100-lt-ir100-ride-lwr", ["lwr.theta=0.0"]),
    ("SADE (3 reduced experts)", "cifar100-lt-ir100-sade", []),
    ("SADE + LWR on the 3 experts' heads", "cifar100-lt-ir100-sade-lwr", ["lwr.theta=0.0"]),
    ("BalPoE (3 full-width experts, mixup)", "cifar100-lt-ir100-balpoe", []),
    # Contrastive family (lwrcli.methods.paco, lwrcli.methods.bcl): views on the device.
    ("PaCo (2 views, momentum encoder, queue 1024)", "cifar100-lt-ir100-paco", []),
    ("GPaCo (2 views through the network, queue 1024)", "cifar100-lt-ir100-gpaco", []),
    ("BCL (3 views, prototypes)", "cifar100-lt-ir100-bcl", []),
    ("BCL + LWR on the classifier", "cifar100-lt-ir100-bcl-lwr", ["lwr.theta=0.0"]),
    (
        "BCL + LWR on the prototypes",
        "cifar100-lt-ir100-bcl-lwr",
        ["lwr.theta=0.0", "loss.lwr_on=prototypes"],
    ),
]
SPEED = ["amp=none", "channels_last=false", "compile=false"]  # the same settings for all


def runner(data_dir: Path, preset: str, sets: list[str], batch: int) -> Callable[[], int]:
    """One call = one Trainer.train_step of the preset's run on the prepared data."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = [f"batch_size={batch}", "eval_every=0", "dataset=any", *SPEED, *sets]
    cfg = load_config(preset, overrides=overrides)
    cfg = resolve_config(cfg, device, "arrays", 100, 32).cfg
    data = build_data(data_dir, cfg, device, train_wrap=train_loader_hook(cfg, 100))
    parts = build_components(cfg, data, device)
    return step_fn(Trainer(cfg, parts, device, run_dir=None))


def seconds_per_step(step: Callable[[], int], steps: int, clock: str = "wall") -> float:
    """Seconds per step over `steps` steps: wall time, or this process's CPU time."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = now()
    for _ in range(steps):
        step()
    sync()
    return (now() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all variants")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--only", default="", help="comma-separated label prefixes (+ baseline)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    if args.clock == "cpu" and torch.cuda.is_available():
        ap.error("--clock cpu times the CPU only; on a GPU use the wall clock")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    counts = long_tailed_counts(500, 100, 100, "exp")  # CIFAR-100-LT IF 100: 10,847 images
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), counts)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    wanted = [p for p in args.only.split(",") if p]
    chosen = [
        v for v in VARIANTS if v[0] == BASELINE or not wanted or v[0].startswith(tuple(wanted))
    ]
    runners: dict[str, Callable[[], int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), images, labels, counts)
        for label, preset, sets in chosen:
            torch.manual_seed(0)
            runners[label] = runner(Path(tmp), preset, sets, args.batch)
            for _ in range(args.warmup):
                runners[label]()
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                rounds[name].append(seconds_per_step(runners[name], args.steps, args.clock))
            print(f"round {r + 1}/{args.repeats} done", flush=True)
    base = statistics.median(rounds[BASELINE])
    rows = [
        {
            "variant": name,
            "s_per_step": round(statistics.median(rounds[name]), 4),
            "ratio_to_plain": round(statistics.median(rounds[name]) / base, 2),
            "ratio_to_plain_min": round(min(rounds[name]) / min(rounds[BASELINE]), 2),
            "rounds_s_per_step": [round(v, 4) for v in rounds[name]],
        }
        for name in names
    ]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    result = {
        "machine": {
            "device": device or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "batch": args.batch,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "speed_settings": SPEED,
        "clock": args.clock,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": rows,
    }
    print("| variant | s / step (median) | × plain ResNet-32 step | × (fastest rounds) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['variant']} | {row['s_per_step']:.3f} | {row['ratio_to_plain']:.2f} | "
            f"{row['ratio_to_plain_min']:.2f} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
