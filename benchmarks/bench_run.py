"""A whole `lwr train` against its own steps and the LDAM-DRW-style loop, in one process.

`bench_train.py` times steps only. This script times what a user runs: the CLI command
`lwr train --preset cifar100-lt-ir100-ce --set epochs=2 --set eval_every=0` (plus `--set`
options, default `amp=none`: fp32) on a prepared `arrays` dataset shaped like CIFAR-100-LT
IF 100 (random 32x32 uint8 images with its 10,847 long-tailed labels over 100 classes: 85
steps an epoch at batch 128; bench_train's `write_dataset`, no download).

Each round times four loops, in a rotated order so machine noise hits all of them:
- `steps`: `Trainer.train_step` over the device loader, as bench_train.py does, for as many
  steps in a row as an epoch has (its partial last batch included), same settings as the run;
- `reference`: bench_train.py's LDAM-DRW-style loop (PIL + DataLoader with 2 workers);
- `run`: the whole `lwr train` command called in this process, with the phase timers on
  (`LWR_PHASE_TIMES`, lwrcli.runtime.timing): every epoch's wall time split into steps, data
  (shuffle, gather, crop/flip), geometry record, eval, checkpoint, logging and other;
- `fresh run`: the same command as a new `python -m lwrcli` process, as a user starts it
  (its first epoch pays the one-time costs: kernel set-up, memory), timers on through a file.

Reported (medians over rounds): images/s of each loop and its ratios to `steps` and to the
reference; for both runs the images/s the run itself reports in metrics.jsonl (its images
over the sum of its epochs' `epoch_time_s`), as the timers see its whole epochs (evaluation
left out) and over the command's wall time (start-up and the final evaluation included); the
per-epoch breakdown and each epoch's images_per_s.

    python benchmarks/bench_run.py [--epochs 2] [--rounds 3] [--set amp=none] [--out F.json]
    python benchmarks/bench_run.py --quick   # checks the script end to end: numbers mean little
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import (  # noqa: E402  (a sibling script, not a package)
    PRESET,
    lwr_runner,
    reference_runner,
    timed,
    write_dataset,
)

from lwrcli.data.profiles import long_tailed_counts  # noqa: E402
from lwrcli.runtime import timing  # noqa: E402
from lwrcli.train.runlog import read_metrics  # noqa: E402


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(
    data: Path, out: Path, epochs: int, batch: int, sets: list[str], fresh: bool
) -> dict[str, Any]:
    """`lwr train` in this process, or (`fresh`) as a new `python -m lwrcli` process, as a user
    runs it; its metrics records, the timers' records and the command's wall time."""
    args = ["train", "--preset", PRESET, "--data", str(data), "--out", str(out)]
    for s in [f"epochs={epochs}", "eval_every=0", f"batch_size={batch}", *sets]:
        args += ["--set", s]
    t0 = time.perf_counter()
    if fresh:
        times = out.with_name(out.name + "-phases.jsonl")
        env = {**os.environ, timing.ENV: str(times)}
        env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        cmd = [sys.executable, "-m", "lwrcli", *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        phases = [json.loads(line) for line in times.read_text().splitlines()]
    else:
        from typer.main import get_command

        from lwrcli.cli.main import app

        first = len(timing.RECORDS)
        get_command(app).main(args, prog_name="lwr", standalone_mode=False)
        phases = timing.RECORDS[first:]
    wall = time.perf_counter() - t0
    epochs_done = [r for r in read_metrics(out / "metrics.jsonl") if int(r["epoch"]) > 0]
    return {"wall_s": wall, "metrics": epochs_done, "phases": phases}


def summarise_run(run: dict[str, Any]) -> dict[str, Any]:
    """images/s of one run: as it reports them (its images over the sum of its epochs'
    epoch_time_s), as the timers see its whole epochs (evaluation left out), and over the
    command's wall time (start-up and the final evaluation included)."""
    images = sum(r["images"] for r in run["phases"])
    reported_time = sum(r["epoch_time_s"] for r in run["metrics"])
    reported_images = sum(r["images_per_s"] * r["epoch_time_s"] for r in run["metrics"])
    wall = sum(r["wall_s"] - r["phases"]["eval"] for r in run["phases"])
    step_loop = sum(r["phases"]["steps"] + r["phases"]["data"] for r in run["phases"])
    return {
        # What the steps loop alone (train_step + the loader's batches, as `steps` times)
        # took of the epochs' time, evaluation out: the run's rate over the step rate if the
        # steps ran as fast in both, measured in the same epochs (insensitive to the machine's
        # load changing between loops).
        "step_loop_share": step_loop / wall,
        "reported_images_per_s": reported_images / reported_time,
        "reported_per_epoch": [round(r["images_per_s"], 1) for r in run["metrics"]],
        "whole_epochs_images_per_s": images / wall,
        "command_images_per_s": images / run["wall_s"],
        "command_wall_s": round(run["wall_s"], 2),
    }


def breakdown(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per epoch of each phase: the mean over a run's epochs, the median over runs."""
    keys = [*timing.PHASES, "other"]
    per_run = [
        {
            **{k: statistics.fmean(e["phases"][k] for e in run["phases"]) for k in keys},
            "wall_s": statistics.fmean(e["wall_s"] for e in run["phases"]),
        }
        for run in runs
    ]
    return {k: round(statistics.median(r[k] for r in per_run), 4) for k in [*keys, "wall_s"]}


LOOPS = ("steps", "reference", "run", "fresh run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each whole run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the four loops")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ref-steps", type=int, default=32, help="reference steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of each loop first")
    ap.add_argument(
        "--set", dest="sets", action="append", default=None, help="run and steps (amp=none)"
    )
    ap.add_argument("--quick", action="store_true", help="1,911 images (15 steps), 1 round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    sets = args.sets if args.sets is not None else ["amp=none"]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    counts = long_tailed_counts(500, 100, 100, "exp")  # CIFAR-100-LT IF 100: 10,847 images
    if args.quick:
        counts = long_tailed_counts(50, 100, 10, "exp")
        args.epochs, args.rounds, args.ref_steps, args.warmup = 1, 1, 4, 1
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), counts)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    steps_per_epoch = -(-len(labels) // args.batch)
    os.environ[timing.ENV] = "1"  # the in-process runs' phase timers (the steps loop has none)
    rounds: dict[str, list[Any]] = {name: [] for name in LOOPS}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        write_dataset(data, images, labels, counts)
        step, settings = lwr_runner(data, sets, args.batch)
        reference = reference_runner(images, labels, args.batch, workers=2)
        for loop in (step, reference):
            for _ in range(args.warmup):
                loop()
        for r in range(args.rounds):
            k = r % len(LOOPS)
            for name in LOOPS[k:] + LOOPS[:k]:
                if name == "steps":
                    rounds[name].append(timed(step, steps_per_epoch))
                elif name == "reference":
                    rounds[name].append(timed(reference, args.ref_steps))
                else:
                    out = Path(tmp) / f"{name.replace(' ', '-')}{r}"
                    fresh = name == "fresh run"
                    rounds[name].append(run_once(data, out, args.epochs, args.batch, sets, fresh))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    step_rate = statistics.median(rounds["steps"])
    ref_rate = statistics.median(rounds["reference"])
    runs = {name: [summarise_run(x) for x in rounds[name]] for name in ("run", "fresh run")}
    med = {
        name: {
            key: statistics.median(s[key] for s in runs[name])
            for key in (
                "reported_images_per_s",
                "whole_epochs_images_per_s",
                "command_images_per_s",
                "step_loop_share",
            )
        }
        for name in runs
    }
    result = {
        "machine": {
            "cpu": cpu_name() if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "preset": PRESET,
        "sets": sets,
        "settings": settings,
        "epochs": args.epochs,
        "images": len(labels),
        "steps_per_epoch": steps_per_epoch,
        "rounds": args.rounds,
        "steps_images_per_s": round(step_rate, 1),
        "reference_images_per_s": round(ref_rate, 1),
        "steps_vs_reference": round(step_rate / ref_rate, 3),
        "runs": {
            name: {
                **{k: round(v, 4 if k == "step_loop_share" else 1) for k, v in med[name].items()},
                "reported_vs_steps": round(med[name]["reported_images_per_s"] / step_rate, 3),
                "reported_vs_reference": round(med[name]["reported_images_per_s"] / ref_rate, 3),
                "whole_epochs_vs_steps": round(
                    med[name]["whole_epochs_images_per_s"] / step_rate, 3
                ),
                "epoch_breakdown_s": breakdown(rounds[name]),
                "each": runs[name],
            }
            for name in runs
        },
        "rounds_steps_images_per_s": [round(v, 1) for v in rounds["steps"]],
        "rounds_reference_images_per_s": [round(v, 1) for v in rounds["reference"]],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(f"{result['machine']['cpu']}, {result['machine']['torch_threads']} threads; {settings}")
    print(f"{len(labels):,} images, {steps_per_epoch} steps an epoch, {args.epochs} epochs a run")
    print("| loop | images/s | × steps | × reference |")
    print("| --- | --- | --- | --- |")

    def row(label: str, rate: float) -> None:
        print(f"| {label} | {rate:.0f} | {rate / step_rate:.2f} | {rate / ref_rate:.2f} |")

    row("steps (bench_train's step, 85 in a row)", step_rate)
    row("reference (LDAM-DRW-style)", ref_rate)
    for name in runs:
        where = "this process" if name == "run" else "a fresh process"
        row(f"lwr train in {where}: images_per_s it reports", med[name]["reported_images_per_s"])
        row(f"lwr train in {where}: whole epochs, timers", med[name]["whole_epochs_images_per_s"])
        row(f"lwr train in {where}: command wall time", med[name]["command_images_per_s"])
    for name in runs:
        parts = result["runs"][name]["epoch_breakdown_s"]
        wall = parts["wall_s"]
        where = "this process" if name == "run" else "a fresh process"
        print(f"\nlwr train in {where}: an epoch of {wall:.2f} s (mean over epochs, median runs)")
        print("| phase | s / epoch | share |")
        print("| --- | --- | --- |")
        for k in [*timing.PHASES, "other"]:
            print(f"| {k} | {parts[k]:.3f} | {100 * parts[k] / wall:.1f}% |")
        print("images_per_s per epoch:", [s["reported_per_epoch"] for s in runs[name]])
        share = med[name]["step_loop_share"]
        print(f"steps + data = {share:.3f} of the epoch (evaluation out): the run's rate over")
        print("the step rate were the steps as fast in both, from the same epochs")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
