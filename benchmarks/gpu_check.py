"""One run on one GPU that measures every performance target in DESIGN.md, in under 8 minutes.

Sections (each with its own time budget; one that fails or runs out of time is recorded as
skipped with its reason and the others still run; the JSON is rewritten after each):

  resnet50     imagenet-lt-bs (and -lwr) through build_components + Trainer.train_step on
               synthetic 224x224 tensors already on the device: bf16 + channels_last, eager
               (compiling ResNet-50 would take much of the budget), images/s and ms/step.
  cifar_epoch  ResNet-32, cifar100-lt-ir100-ce with its `auto` speed settings, through the real
               device-resident pipeline over a generated CIFAR-100-LT-shaped dataset (10,847
               random 32x32 images with the LT counts, 10,000 test images): epoch 0 (compiles),
               steady epochs, evaluation, and the 200-epoch estimate.
  compile      ResNet-32 steps with compile off / on (default) / on (reduce-overhead): the first
               step's time (compiling) apart from steady-state images/s.
  lwr          lwr_penalty forward + backward at C = 1000 and 8142 (d 2048), ms and share of
               the resnet50 section's step.
  parallel     1, 2 and 4 processes on one device, each training ResNet-32 for a fixed number
               of steps (this script's --worker mode), started together: total images/s.
  clip         CLIP ViT-B/16 (random weights) AdaptFormer vs full fine-tuning steps with bf16
               (bench_clip.make_step), images/s and the LIFT ImageNet-LT 10-epoch estimate.
  frontier     RIDE, SADE, PaCo and BCL (and LWR on their heads) steps as ratios to the plain
               ResNet-32 CE step on the generated CIFAR-100-LT data (bench_frontier.py).
  decode       nvjpeg: TorchCodec's decode_jpeg(device="cuda") against torchvision.io's on
               batches of generated 500x375 JPEGs (bench_loader.py's), images/s and the ratio,
               and each one's largest difference from the CPU decode (lwrcli.data.decode).
               TorchCodec needs torch >= 2.11: on an older image only torchvision's is timed
               (carry its wheel with fetch-wheels.sh torchcodec where torch allows). Skipped
               (recorded as such) without CUDA.

Run on a machine with a GPU, from the project root:

    python benchmarks/gpu_check.py [--out gpu_check] [--only resnet50,lwr] [--skip clip]

On the project's GPU machine (Python 3.12 image with torch and torchvision but no pydantic;
../shared/gpu/README.md), first here: `bash ../shared/gpu/fetch-wheels.sh open_clip_torch
ftfy wcwidth regex tqdm` (the last five only for the clip section), then one device run with
carry [".whl"] and the command

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
      || exit; python3 benchmarks/gpu_check.py --out $OUT

or simply `bash benchmarks/gpu_check.sh`, which does the same. On a CPU, `--device cpu
--quick` runs every section end to end with tiny sizes in a few minutes: a check of the
script, not a measurement. Absolute figures count only from a GPU (DESIGN.md's targets are
for one H100).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* modules
from bench_train import step_fn, write_dataset  # noqa: E402

from lwrcli.config import load_config  # noqa: E402
from lwrcli.data.loading import DataBundle, build_data  # noqa: E402
from lwrcli.data.manifest import make_manifest  # noqa: E402
from lwrcli.data.profiles import long_tailed_counts  # noqa: E402
from lwrcli.train.build import build_components  # noqa: E402
from lwrcli.train.engine import Trainer  # noqa: E402
from lwrcli.train.lwr import lwr_penalty  # noqa: E402
from lwrcli.train.progress import TrainProgress  # noqa: E402
from lwrcli.train.resolve import resolve_speed_settings, speed_summary  # noqa: E402

CIFAR_PRESET = "cifar100-lt-ir100-ce"
CIFAR_TRAIN = 10_847  # CIFAR-100-LT IF 100
CIFAR_EPOCHS = 200
LIFT_IMAGES = 1_158_460  # 10 epochs of ImageNet-LT's 115,846 train images
SECTIONS = ("resnet50", "cifar_epoch", "compile", "lwr", "parallel", "clip", "frontier", "decode")
# Per-section budgets in seconds (full run: 460 s of 480 s, the rest for start-up).
BUDGETS = {
    "resnet50": 55,
    "cifar_epoch": 90,
    "compile": 110,
    "lwr": 20,
    "parallel": 70,
    "clip": 55,
    "frontier": 50,
    "decode": 10,
}
QUICK_BUDGETS = {
    "resnet50": 40,
    "cifar_epoch": 90,
    "compile": 150,
    "lwr": 20,
    "parallel": 90,
    "clip": 120,
    "frontier": 120,
    "decode": 20,
}
COMPILE_VARIANTS = {
    "compile off": ["compile=false"],
    "compile on (default)": ["compile=true", "compile_mode=default"],
    "compile on (reduce-overhead)": ["compile=true", "compile_mode=reduce-overhead"],
}


@dataclass
class Sizes:
    """Every size the sections use; `--quick` swaps in tiny ones."""

    r50_batch: int = 256
    r50_image: int = 224
    r50_steps: int = 20
    cifar_max_per_class: int = 500  # 10,847 images with the IF-100 profile
    cifar_test: int = 10_000
    cifar_batch: int = 128
    cifar_epochs: int = 2  # steady epochs timed after epoch 0
    compile_steps: int = 100
    lwr_sizes: tuple[tuple[int, int], ...] = ((1000, 2048), (8142, 2048))
    lwr_repeats: int = 10
    parallel_procs: tuple[int, ...] = (1, 2, 4)
    parallel_steps: int = 200
    clip_batch: int = 128
    clip_steps: int = 8
    decode_images: int = 256  # 500x375 JPEGs
    decode_batch: int = 64
    warmup: int = 3


QUICK = Sizes(
    r50_batch=4,
    r50_image=64,
    r50_steps=2,
    cifar_max_per_class=15,
    cifar_test=100,
    cifar_batch=64,
    cifar_epochs=1,
    compile_steps=3,
    lwr_sizes=((1000, 256), (8142, 32)),
    lwr_repeats=2,
    parallel_procs=(1, 2),
    parallel_steps=4,
    clip_batch=2,
    clip_steps=1,
    decode_images=8,
    decode_batch=4,
    warmup=1,
)


class SectionSkipped(Exception):
    """A section that cannot run here (no CUDA for a GPU-only one): recorded as skipped."""


class SectionTimeout(BaseException):
    """A section ran past its budget (raised from SIGALRM). A BaseException, like Ctrl-C, so
    that the `except Exception` in CompileFallback (or torch's own wrappers) cannot turn it
    into "compile failed, continue in eager mode" and run on past the budget."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after `seconds` (where SIGALRM exists)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"ran past its budget of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(
    step: Callable[[], Any], steps: int, device: torch.device, until: float
) -> tuple[int, float]:
    """Run up to `steps` steps (at least one; fewer if time.perf_counter() passes `until`):
    (steps run, seconds), synchronised at both ends so queued GPU work is counted."""
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < steps and (done == 0 or time.perf_counter() < until):
        step()
        done += 1
    sync(device)
    return done, time.perf_counter() - t0


@dataclass
class Ctx:
    """What the sections share: the device, sizes, results so far, a scratch folder."""

    device: torch.device
    sizes: Sizes
    quick: bool
    tmp: Path
    results: dict[str, Any]
    until: float = 0.0  # the current section's soft end (perf_counter) for timing loops
    end: float = 0.0  # its hard end (the budget), where SIGALRM stops it
    # What the running section has measured so far: kept when it fails or runs out of time.
    partial: dict[str, Any] = field(default_factory=dict)

    def cifar_data(self) -> Path:
        """The generated CIFAR-100-LT-shaped prepared dataset, written once per run."""
        folder = self.tmp / "cifar100-lt"
        if not (folder / "manifest.json").exists():
            # At least one image per class (a no-op at full size, where the fewest is 5).
            counts = [
                max(1, c)
                for c in long_tailed_counts(self.sizes.cifar_max_per_class, 100, 100, "exp")
            ]
            labels = np.repeat(np.arange(100), counts)
            rng = np.random.default_rng(0)
            images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
            folder.mkdir(parents=True, exist_ok=True)
            write_dataset(folder, images, labels, counts, test_images=self.sizes.cifar_test)
        return folder


def cifar_trainer(ctx: Ctx, sets: list[str]) -> Trainer:
    """A Trainer for the CIFAR-100-LT CE preset over the generated data, on ctx.device."""
    cfg = load_config(
        CIFAR_PRESET,
        overrides=[
            f"batch_size={ctx.sizes.cifar_batch}",
            "checkpoint_every_minutes=0",
            "checkpoint_every_steps=0",
            *sets,
        ],
    )
    cfg = resolve_speed_settings(cfg, ctx.device, "arrays")
    data = build_data(ctx.cifar_data(), cfg, ctx.device)
    parts = build_components(cfg, data, ctx.device)
    return Trainer(cfg, parts, ctx.device, None, progress=TrainProgress(cfg.epochs, False))


# --- sections ------------------------------------------------------------------------------


def section_resnet50(ctx: Ctx) -> dict[str, Any]:
    """ImageNet-LT ResNet-50 steps, with and without LWR, on synthetic device tensors."""
    s, dev = ctx.sizes, ctx.device
    counts = long_tailed_counts(1280, 1000, 256, "exp")  # ImageNet-LT-like: 1,280 down to 5
    manifest = make_manifest(
        name="gpu-check-imagenet-lt-shaped",
        source="imagenet-lt",
        synthetic=True,
        storage="lists",
        class_names=[f"c{c}" for c in range(1000)],
        class_counts=counts,
        splits={"train": sum(counts)},
        image_size=s.r50_image,
        fingerprint="synthetic",
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s.r50_batch, 3, s.r50_image, s.r50_image, generator=g).to(dev)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (s.r50_batch,), generator=g).to(dev)
    rows: dict[str, Any] = {}
    for preset in ("imagenet-lt-bs", "imagenet-lt-bs-lwr"):
        sets = [f"batch_size={s.r50_batch}", "compile=false", "channels_last=true"]
        cfg = resolve_speed_settings(load_config(preset, overrides=sets), dev, "lists")
        parts = build_components(cfg, DataBundle(manifest=manifest, train=None), dev)
        trainer = Trainer(cfg, parts, dev, None, progress=TrainProgress(cfg.epochs, False))
        trainer.model.train()

        def step(trainer: Trainer = trainer) -> None:
            trainer.train_step(x, y, trainer.cfg.epochs / 2, None)

        timed_steps(step, s.warmup, dev, float("inf"))
        n, sec = timed_steps(step, s.r50_steps, dev, ctx.until)
        rows[preset] = {
            "settings": speed_summary(cfg),
            "steps": n,
            "ms_per_step": 1000 * sec / n,
            "images_per_s": n * s.r50_batch / sec,
        }
        del trainer, parts, step
        free(dev)
    base, lwr = rows["imagenet-lt-bs"], rows["imagenet-lt-bs-lwr"]
    return {
        "batch": s.r50_batch,
        "image_size": s.r50_image,
        "presets": rows,
        "lwr_share_of_step_engine": lwr["ms_per_step"] / base["ms_per_step"] - 1,
        "summary": [
            [
                f"ResNet-50 images/s ({base['settings']})",
                f"{base['images_per_s']:.1f}",
                ">= 2,500 (H100, bf16 + channels_last)",
            ],
            [
                "ResNet-50 + LWR (C = 1000) step vs without",
                f"{100 * (lwr['ms_per_step'] / base['ms_per_step'] - 1):+.1f} %",
                "<= 2 %",
            ],
        ],
    }


def section_cifar_epoch(ctx: Ctx) -> dict[str, Any]:
    """Whole epochs and evaluations of the CE preset with `lwr train`'s auto settings."""
    trainer = cifar_trainer(ctx, [])
    epochs: list[float] = []
    ctx.partial.update(settings=speed_summary(trainer.cfg), epoch_s=epochs)
    for epoch in range(1 + ctx.sizes.cifar_epochs):
        epochs.append(trainer.train_epoch(epoch)["epoch_time_s"])
        if time.perf_counter() > ctx.until and len(epochs) >= 2:
            break
    evals = []
    for _ in range(2):
        sync(ctx.device)
        t0 = time.perf_counter()
        trainer.evaluate()
        sync(ctx.device)
        evals.append(time.perf_counter() - t0)
    images = sum(trainer.data.class_counts)
    scale = CIFAR_TRAIN / images  # 1 unless --quick shrank the data
    steady = statistics.median(epochs[1:]) * scale
    eval_steady = evals[1] * 10_000 / ctx.sizes.cifar_test
    first_extra = epochs[0] * scale - steady + evals[0] - evals[1]  # compiling, warm-up
    every = trainer.cfg.eval_every or CIFAR_EPOCHS + 1
    estimate = first_extra + CIFAR_EPOCHS * steady + (CIFAR_EPOCHS // every) * eval_steady
    return {
        "settings": speed_summary(trainer.cfg),
        "train_images": images,
        "scaled_to_10847": scale != 1,
        "epoch_s": epochs,
        "eval_s": evals,
        "steady_epoch_s_10847": steady,
        "eval_s_10000": eval_steady,
        "first_epoch_extra_s": first_extra,
        "estimate_200_epochs_s": estimate,
        "summary": [
            ["ResNet-32 CIFAR-100-LT epoch (steady)", f"{steady:.2f} s", "-"],
            [
                "ResNet-32 CIFAR-100-LT 200 epochs (estimate, with evals)",
                f"{estimate / 60:.1f} min",
                "< 3 min (H100)",
            ],
        ],
    }


def section_compile(ctx: Ctx) -> dict[str, Any]:
    """Compile off / default / reduce-overhead: first step (compiling) apart from steady."""
    rows: dict[str, Any] = {}
    ctx.partial["variants"] = rows
    per = max(1.0, ctx.until - time.perf_counter()) / len(COMPILE_VARIANTS)
    for name, sets in COMPILE_VARIANTS.items():
        t_start = time.perf_counter()
        trainer = cifar_trainer(ctx, sets)
        step = step_fn(trainer)
        _, first = timed_steps(step, 1, ctx.device, float("inf"))
        timed_steps(step, ctx.sizes.warmup, ctx.device, float("inf"))
        n, sec = timed_steps(step, ctx.sizes.compile_steps, ctx.device, t_start + per)
        rows[name] = {
            "settings": speed_summary(trainer.cfg),
            "first_step_s": first,
            "steps": n,
            "images_per_s": n * ctx.sizes.cifar_batch / sec,
        }
        del trainer, step
        free(ctx.device)
    return {
        "batch": ctx.sizes.cifar_batch,
        "variants": rows,
        "note": "first_step_s includes compiling (forward and backward); inductor's caches may "
        "shorten a later compile of the same graph in the same run",
        "summary": [
            [
                f"ResNet-32 {name}",
                f"{r['images_per_s']:.0f} images/s, first step {r['first_step_s']:.1f} s",
                "-",
            ]
            for name, r in rows.items()
        ],
    }


def section_lwr(ctx: Ctx) -> dict[str, Any]:
    """lwr_penalty forward + backward (blockwise, the engine's path), alone."""
    r50 = ctx.results.get("resnet50", {}).get("results")
    step_ms = r50["presets"]["imagenet-lt-bs"]["ms_per_step"] if r50 else None
    rows, summary = [], []
    for c, d in ctx.sizes.lwr_sizes:
        w = torch.randn(c, d, device=ctx.device, requires_grad=True)

        def once(w: torch.Tensor = w) -> None:
            w.grad = None
            lwr_penalty(w, 0.4, 1, True, 1024).backward()

        timed_steps(once, 1, ctx.device, float("inf"))
        n, sec = timed_steps(once, ctx.sizes.lwr_repeats, ctx.device, ctx.until)
        ms = 1000 * sec / n
        share = ms / step_ms if step_ms else None
        rows.append({"C": c, "d": d, "ms": ms, "share_of_resnet50_step": share})
        target = "<= 2 %" if c <= 1000 else "<= 10 %"
        shown = f"{ms:.2f} ms" + (f" ({100 * share:.1f} % of a step)" if share else "")
        summary.append([f"LWR fwd+bwd C = {c}, d = {d}", shown, target])
        del w, once
    free(ctx.device)
    return {"resnet50_step_ms": step_ms, "rows": rows, "summary": summary}


def section_parallel(ctx: Ctx) -> dict[str, Any]:
    """N worker processes started together on one device; total images/s against one."""
    data = ctx.cifar_data()
    rows: list[dict[str, Any]] = []
    ctx.partial["rows"] = rows
    for procs in ctx.sizes.parallel_procs:
        if rows and time.perf_counter() > ctx.until:
            break  # out of time: what ran is reported (the first row is the baseline)
        rows.append(run_workers(ctx, data, procs, max(ctx.end - time.perf_counter(), 1.0)))
    one = rows[0]["total_images_per_s"]
    for row in rows:
        row["vs_one"] = row["total_images_per_s"] / one
    return {
        "settings": "cifar100-lt-ir100-ce, compile off, amp/channels_last auto",
        "batch": ctx.sizes.cifar_batch,
        "steps_per_process": ctx.sizes.parallel_steps,
        "rows": rows,
        "summary": [
            [
                f"{r['processes']} concurrent ResNet-32 runs",
                f"{r['total_images_per_s']:.0f} images/s in all ({r['vs_one']:.2f}x one)",
                "-",
            ]
            for r in rows
        ],
    }


def run_workers(ctx: Ctx, data: Path, procs: int, timeout: float) -> dict[str, Any]:
    """Start `procs` workers, release them together once all are warm, gather their spans."""
    go = ctx.tmp / f"go-{procs}"
    env = dict(os.environ)
    if ctx.device.type == "cpu":  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--device",
        str(ctx.device),
        "--worker",
        str(data),
        "--go",
        str(go),
        "--batch",
        str(ctx.sizes.cifar_batch),
        "--steps",
        str(ctx.sizes.parallel_steps),
    ]
    ready = [ctx.tmp / f"ready-{procs}-{i}" for i in range(procs)]
    workers = [
        subprocess.Popen([*cmd, "--ready", str(r)], env=env, stdout=subprocess.PIPE, text=True)
        for r in ready
    ]
    end = time.perf_counter() + timeout
    try:
        while not all(r.exists() for r in ready):
            if time.perf_counter() > end or any(w.poll() not in (None, 0) for w in workers):
                raise RuntimeError(f"{procs} workers: not all got ready")
            time.sleep(0.05)
        go.touch()
        spans = []
        for w in workers:
            out, _ = w.communicate(timeout=max(1.0, end - time.perf_counter()))
            if w.returncode != 0:
                raise RuntimeError(f"a worker exited with {w.returncode}")
            spans.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    images = sum(s["images"] for s in spans)
    return {
        "processes": procs,
        "total_images_per_s": images / wall,
        "per_process_images_per_s": [s["images"] / (s["end"] - s["start"]) for s in spans],
        "wall_s": wall,
    }


def worker(args: argparse.Namespace) -> None:
    """--worker mode: warm up, say ready, wait for go, time the steps, print one JSON line."""
    device = torch.device(args.device)
    ctx = Ctx(device, Sizes(cifar_batch=args.batch), False, Path(args.worker).parent, {})
    trainer = cifar_trainer(ctx, ["compile=false"])
    step = step_fn(trainer)
    timed_steps(step, 3, device, float("inf"))
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.005)
    sync(device)
    start = time.time()  # wall clock: comparable across processes
    images = sum(step() for _ in range(args.steps))
    sync(device)
    print(json.dumps({"images": images, "start": start, "end": time.time()}), flush=True)


def section_clip(ctx: Ctx) -> dict[str, Any]:
    """CLIP ViT-B/16 AdaptFormer (LIFT) vs full fine-tuning steps, bf16 on CUDA."""
    try:
        import open_clip  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "open_clip is not installed (carry it: bash ../shared/gpu/fetch-wheels.sh "
            "open_clip_torch ftfy wcwidth regex tqdm)"
        ) from None
    from bench_clip import VARIANTS, make_step

    amp = "bf16" if ctx.device.type == "cuda" else "none"
    rows: dict[str, Any] = {}
    ctx.partial["variants"] = rows
    per = max(1.0, ctx.until - time.perf_counter()) / 2
    for name in ("full", "adaptformer (LIFT)"):
        t_start = time.perf_counter()
        step, _ = make_step(VARIANTS[name], ctx.sizes.clip_batch, ctx.device, amp)
        timed_steps(step, 1, ctx.device, float("inf"))
        n, sec = timed_steps(step, ctx.sizes.clip_steps, ctx.device, t_start + per)
        rate = n * ctx.sizes.clip_batch / sec
        rows[name] = {"images_per_s": rate, "lift_10_epochs_min": LIFT_IMAGES / rate / 60}
        del step
        free(ctx.device)
    lift = rows["adaptformer (LIFT)"]
    return {
        "batch": ctx.sizes.clip_batch,
        "amp": amp,
        "variants": rows,
        "summary": [
            [f"CLIP ViT-B/16 {name} images/s", f"{r['images_per_s']:.1f}", "-"]
            for name, r in rows.items()
        ]
        + [
            [
                "LIFT ImageNet-LT 10 epochs (estimate)",
                f"{lift['lift_10_epochs_min']:.1f} min",
                "< 15 min (H100)",
            ]
        ],
    }


def section_frontier(ctx: Ctx) -> dict[str, Any]:
    """The frontier families (issue 25) as ratios to the plain ResNet-32 CE step, measured
    here one after another (bench_frontier.py's variants, its plain fp32 settings)."""
    from bench_frontier import BASELINE, VARIANTS, runner, seconds_per_step

    wanted = [v for v in VARIANTS if v[0] == BASELINE or v[0].startswith(FRONTIER_ROWS)]
    rows: dict[str, Any] = {}
    ctx.partial["seconds_per_step"] = rows
    per = max(1.0, ctx.until - time.perf_counter()) / len(wanted)
    for label, preset, sets in wanted:
        t_start = time.perf_counter()
        step = runner(ctx.cifar_data(), preset, sets, ctx.sizes.cifar_batch)
        step()  # warm-up: the first step allocates
        n = 0
        total = 0.0
        while n < 3 or (n < 20 and time.perf_counter() < t_start + per):
            total += seconds_per_step(step, 1)
            n += 1
        rows[label] = total / n
        del step
        free(ctx.device)
    base = rows[BASELINE]
    return {
        "batch": ctx.sizes.cifar_batch,
        "seconds_per_step": rows,
        "summary": [
            [f"{label} (x plain ResNet-32 step)", f"{sec / base:.2f}", "-"]
            for label, sec in rows.items()
            if label != BASELINE
        ],
    }


def section_decode(ctx: Ctx) -> dict[str, Any]:
    """nvjpeg through TorchCodec and torchvision.io, a batch per call as `data.gpu_decode`
    decodes (lwrcli.data.decode.decode_rgb_batch), alternated rounds until the soft end."""
    if ctx.device.type != "cuda":
        raise SectionSkipped("needs CUDA (nvjpeg decodes on the GPU)")
    return decode_rates(ctx)


def decode_rates(ctx: Ctx) -> dict[str, Any]:
    """section_decode's measurement on ctx.device (on a CPU: the CPU decoders, as a check of
    this code in the tests)."""
    import warnings

    from bench_loader import jpeg_bytes

    from lwrcli.data import decode

    files = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpeg_bytes(
        ctx.sizes.decode_images)]  # fmt: skip
    size = ctx.sizes.decode_batch
    batches = [files[i : i + size] for i in range(0, len(files), size)]
    fns: dict[str, Callable[[list[torch.Tensor]], list[torch.Tensor]]] = {}
    notes = []
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        def tv(batch: list[torch.Tensor]) -> list[torch.Tensor]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(batch, mode=ImageReadMode.RGB, device=ctx.device)

        fns["torchvision.io"] = tv
    except ImportError:
        notes.append("torchvision.io has no decode_jpeg (removed)")
    tc = decode._torchcodec()[0]
    if tc is not None:
        fns["torchcodec"] = lambda batch: tc.decode_jpeg(batch, mode="RGB", device=ctx.device)
    else:
        notes.append("torchcodec not installed or not loadable (needs torch >= 2.11)")
    lwr = f"lwr decode_rgb_batch ({decode.decoder()})"
    fns[lwr] = lambda batch: decode.decode_rgb_batch(batch, ctx.device)
    cpu = [decode.decode_rgb(d).int() for d in batches[0]]
    diff: dict[str, int] = {}
    for name, fn in fns.items():  # the first call also creates nvjpeg's state: a warm-up
        out = fn(batches[0])
        diff[name] = max(int((o.cpu().int() - c).abs().max()) for o, c in zip(out, cpu))
    ctx.partial["max_abs_diff_vs_cpu"] = diff
    seconds = dict.fromkeys(fns, 0.0)
    rounds = 0
    names = list(fns)
    while rounds == 0 or time.perf_counter() < ctx.until:
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            sync(ctx.device)
            t0 = time.perf_counter()
            for batch in batches:
                fns[name](batch)
            sync(ctx.device)
            seconds[name] += time.perf_counter() - t0
        rounds += 1
    rate = {name: rounds * len(files) / sec for name, sec in seconds.items()}
    both = "torchcodec" in rate and "torchvision.io" in rate
    ratio = rate["torchcodec"] / rate["torchvision.io"] if both else None
    what = f"{len(files)} 500x375 JPEGs, batch {size}"
    summary = [[f"nvjpeg decode, {name}, images/s ({what})", f"{r:.0f}", "-"]
               for name, r in rate.items()]  # fmt: skip
    summary += [[f"nvjpeg vs CPU decode, {name}, max abs diff", str(d), "<= 8 levels"]
                for name, d in diff.items()]  # fmt: skip
    if ratio is not None:
        summary.append(["TorchCodec / torchvision.io nvjpeg speed", f"{ratio:.2f}x", "-"])
    return {
        "images": len(files),
        "batch": size,
        "rounds": rounds,
        "decoder": decode.decoder(),
        "images_per_s": rate,
        "torchcodec_vs_torchvision_io": ratio,
        "max_abs_diff_vs_cpu": diff,
        "notes": notes,
        "summary": summary,
    }


# The frontier rows gpu_check times (label prefixes of bench_frontier.VARIANTS).
FRONTIER_ROWS = ("RIDE", "SADE", "PaCo", "BCL (3 views", "BCL + LWR on the classifier")


SECTION_FNS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "resnet50": section_resnet50,
    "cifar_epoch": section_cifar_epoch,
    "compile": section_compile,
    "lwr": section_lwr,
    "parallel": section_parallel,
    "clip": section_clip,
    "frontier": section_frontier,
    "decode": section_decode,
}


# --- running and writing -------------------------------------------------------------------


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device, quick: bool) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(device),
        "quick": quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    lines = [
        "# gpu_check",
        "",
        f"{where}, torch {env['torch']}, Python {env['python']}, "
        f"{'--quick (tiny sizes)' if env['quick'] else 'full sizes'}, "
        f"{report.get('wall_s', 0):.0f} s in all.",
        "",
    ]
    if env["device"] == "cpu" or env["quick"]:
        lines += [
            "**Not a measurement: CPU and/or --quick sizes; absolute figures mean nothing here.**",
            "",
        ]
    lines += ["| check | measured | target | section |", "| --- | --- | --- | --- |"]
    for name, sec in report["sections"].items():
        if sec["status"] == "ok":
            for check, value, target in sec["results"]["summary"]:
                lines.append(f"| {check} | {value} | {target} | {name} |")
        else:
            lines.append(f"| {name} | {sec['status']}: {sec['reason']} | - | {name} |")
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


def run_section(name: str, ctx: Ctx, budget: float) -> dict[str, Any]:
    """One section under its budget; an error or timeout becomes a recorded skip."""
    t0 = time.perf_counter()
    ctx.until = t0 + 0.7 * budget  # timing loops stop here; the rest is set-up headroom
    ctx.end = t0 + budget
    ctx.partial = {}
    try:
        with deadline(budget):
            results = SECTION_FNS[name](ctx)
        status, reason = "ok", None
    except SectionTimeout as exc:
        results, status, reason = None, "timeout", str(exc)
    except SectionSkipped as exc:
        results, status, reason = None, "skipped", str(exc)
    except Exception as exc:  # any failure: recorded, and the next section runs
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        results, status, reason = None, "error", f"{type(exc).__name__}: {first}"
    free(ctx.device)
    return {
        "status": status,
        "reason": reason,
        "seconds": round(time.perf_counter() - t0, 1),
        "budget_s": budget,
        "results": results,
        "partial": None if results is not None else (ctx.partial or None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("gpu_check"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
    ap.add_argument("--only", default="", help=f"comma-separated of {','.join(SECTIONS)}")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget")
    # --worker mode (the parallel section's processes); not for direct use.
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=100, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    chosen = [s for s in (args.only.split(",") if args.only else SECTIONS) if s]
    unknown = [s for s in chosen + args.skip.split(",") if s and s not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    chosen = [s for s in chosen if s not in args.skip.split(",")]
    device = torch.device(args.device)
    sizes = QUICK if args.quick else Sizes()
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    started = time.perf_counter()
    report: dict[str, Any] = {
        "environment": environment(device, args.quick),
        "sizes": asdict(sizes),
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ctx = Ctx(device, sizes, args.quick, Path(tmp), report["sections"])
        for name in chosen:
            print(f"[gpu_check] {name} ...", flush=True)
            report["sections"][name] = sec = run_section(
                name, ctx, budgets[name] * args.budget_scale
            )
            report["wall_s"] = time.perf_counter() - started
            write(args.out, report)
            print(
                f"[gpu_check] {name}: {sec['status']} in {sec['seconds']} s"
                + (f" ({sec['reason']})" if sec["reason"] else ""),
                flush=True,
            )
    print(markdown(report))
    print(f"Wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
