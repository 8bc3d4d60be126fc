"""CLIP ViT-B/16 fine-tuning throughput and activation memory: LIFT's AdaptFormer against full
fine-tuning (and the head alone), side by side in one process.

Each variant is the model `lwr train` builds for `imagenet-lt-clip-vit-b16-lift` (open_clip
ViT-B/16 image tower, cosine head of 1,000 classes on the un-projected features, AdaptFormer
width 32 by LIFT's rule) with random weights (nothing is downloaded), and one training step is
what the engine does: autocast forward, logit-adjusted loss, optionally LWR at theta: init,
backward, SGD over the trainable tensors. Attention runs through nn.MultiheadAttention with
need_weights=False, i.e. torch's scaled_dot_product_attention (flash / memory-efficient
kernels on a GPU).

Reported per variant: median images/s over `--repeats` rounds (variants rotated each round so
machine noise hits all), its ratio to full fine-tuning, trainable parameters, the activation
bytes autograd saves for backward per image (device-independent; weights not counted), on
CUDA the peak allocated memory per image, and the time the LIFT recipe's 10 ImageNet-LT epochs
(1,158,460 images) would take at the measured rate. Absolute figures mean something only on a
GPU; on a CPU compare ratios.

    python benchmarks/bench_clip.py [--device cuda] [--batch 128] [--amp bf16] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lwrcli.config import LWRConfig, ModelConfig, loss_section
from lwrcli.methods.losses import build_loss
from lwrcli.models import build_model, get_classifier
from lwrcli.runtime.device import autocast_context
from lwrcli.train.lwr import LWR, reference_rows

CLASSES = 1000
IMAGENET_LT_TRAIN = 115_846  # images in the ImageNet-LT train list
LIFT_EPOCHS = 10
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"tuning": "full"},
    "adaptformer (LIFT)": {"tuning": "adaptformer"},
    "adaptformer + LWR": {"tuning": "adaptformer", "lwr": True},
    "head only": {"tuning": "head"},
}


def saved_bytes(step: Callable[[], None], params: list[torch.Tensor]) -> int:
    """Bytes of activation storage autograd keeps for backward during one step's forward:
    each storage counted once (saved views share one), the parameters' own left out."""
    weights = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def make_step(
    variant: dict[str, Any], batch: int, device: torch.device, amp: str
) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """One engine-like training step for the variant, and the model's parameters."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="clip:ViT-B-16",
        head={"name": "cosine", "scale": 25.0},
        tuning=variant["tuning"],
    )
    model = build_model(cfg, CLASSES).to(device).train()
    counts = torch.tensor(
        [max(5, int(1280 * 0.994**c)) for c in range(CLASSES)], dtype=torch.float64
    )
    loss_fn = build_loss(loss_section(name="la"), counts).to(device)
    head = get_classifier(model).weight
    regularizer = None
    if variant.get("lwr"):
        lw = LWRConfig(enabled=True, lambda_max=130.0, theta="init")
        regularizer = LWR(lw, LIFT_EPOCHS, reference_rows(head, lw.proj))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, 3, 224, 224, generator=g).to(device)
    y = torch.randint(0, CLASSES, (batch,), generator=g).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y, None)
        if regularizer is not None:
            term = regularizer(head, LIFT_EPOCHS)
            if term is not None:
                loss = loss + term[0]
        loss.backward()
        opt.step()

    return step, list(model.parameters())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 128 on CUDA, 8 on CPU")
    ap.add_argument("--amp", default=None, help="bf16 or none (default: bf16 on CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant per round")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default="all", help="comma-separated names, or all")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 8)
    amp = args.amp or ("bf16" if cuda else "none")
    steps = args.steps or (10 if cuda else 2)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")

    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        step, params = make_step(VARIANTS[name], batch, device, amp)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        saved = saved_bytes(step, params)  # also the warm-up step
        sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) if cuda else None
        runs[name] = {
            "step": step,
            "trainable": trainable,
            "total": total,
            "saved_bytes_per_image": saved / batch,
            "cuda_peak_bytes_per_image": None if peak is None else peak / batch,
            "rates": [],
        }
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                runs[name]["step"]()
            sync(device)
            runs[name]["rates"].append(steps * batch / (time.perf_counter() - t0))

    ref = statistics.median(runs[names[0]]["rates"])
    rows = []
    for name in names:
        rate = statistics.median(runs[name]["rates"])
        run = runs[name]
        rows.append(
            {
                "variant": name,
                "images_per_s": rate,
                "ratio_to_" + names[0].split()[0]: rate / ref,
                "trainable_params": run["trainable"],
                "total_params": run["total"],
                "saved_mib_per_image": run["saved_bytes_per_image"] / 2**20,
                "cuda_peak_mib_per_image": (
                    None
                    if run["cuda_peak_bytes_per_image"] is None
                    else run["cuda_peak_bytes_per_image"] / 2**20
                ),
                "lift_imagenet_lt_10_epochs_min": IMAGENET_LT_TRAIN * LIFT_EPOCHS / rate / 60,
            }
        )
    env = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "amp": amp,
        "steps": steps,
        "repeats": args.repeats,
    }
    print(f"{env}")
    print(
        f"{'variant':22s} {'img/s':>8s} {'ratio':>6s} {'trainable':>12s} "
        f"{'saved MiB/img':>14s} {'peak MiB/img':>13s} {'10 ep. IN-LT':>13s}"
    )
    for row in rows:
        peak = row["cuda_peak_mib_per_image"]
        print(
            f"{row['variant']:22s} {row['images_per_s']:8.2f} "
            f"{row['ratio_to_' + names[0].split()[0]]:6.2f} {row['trainable_params']:12,d} "
            f"{row['saved_mib_per_image']:14.1f} {'-' if peak is None else f'{peak:13.1f}'} "
            f"{row['lift_imagenet_lt_10_epochs_min']:11.0f} min"
        )
    if args.out:
        args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
