"""LWR cost: blockwise custom-backward vs dense autograd, and overhead against a train step.

For each (C, d) it reports fwd+bwd time of `lwr_penalty` (blockwise) and of the dense
reference, the bytes autograd keeps saved between forward and backward for each, and (with
--step) the LWR time as a fraction of one ResNet-50 training step in the same run.

    python benchmarks/bench_lwr.py [--sizes 100x64,1000x2048,8142x2048] [--step] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from lwrcli.train.lwr import lwr_penalty, lwr_penalty_dense


def saved_bytes(fn, w: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        r = fn(w)
    r.backward()
    return sum(seen.values())


def timed(fn, w: torch.Tensor, repeats: int) -> float:
    def once() -> None:
        w.grad = None
        fn(w).backward()

    once()
    sync(w.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    sync(w.device)
    return (time.perf_counter() - t0) / repeats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resnet50_step(device: torch.device, batch: int, classes: int, repeats: int) -> float:
    from torchvision.models import resnet50

    model = resnet50(num_classes=classes).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100x64,1000x2048,8142x2048")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step", action="store_true", help="also time a ResNet-50 train step")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "block": args.block,
        "rows": [],
    }
    for size in args.sizes.split(","):
        c, d = map(int, size.split("x"))
        w = torch.randn(c, d, device=device, requires_grad=True)
        block = lambda t: lwr_penalty(t, 0.0, 1, True, args.block)  # noqa: E731
        dense = lambda t: lwr_penalty_dense(t, 0.0, 1, True)  # noqa: E731
        row = {
            "C": c,
            "d": d,
            "block_s": timed(block, w, args.repeats),
            "block_saved_MB": saved_bytes(block, w) / 2**20,
        }
        if not args.no_dense:
            row["dense_s"] = timed(dense, w, args.repeats)
            row["dense_saved_MB"] = saved_bytes(dense, w) / 2**20
        if args.step:
            step = resnet50_step(device, args.batch, c, max(1, args.repeats - 1))
            row["resnet50_step_s"] = step
            row["overhead_pct"] = 100 * row["block_s"] / step
        out["rows"].append({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
