"""Cost of the per-epoch class-vector geometry (lwrcli.train.geometry) at ImageNet-LT size.

C = 1000 classes, d = 2048 (ResNet-50): time of `class_geometry` against an estimate of one
ResNet-50 ImageNet-LT epoch (115,846 images) at a given throughput. Run:
    python benchmarks/bench_geometry.py [--images-per-s 2500] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from lwrcli.train.geometry import class_geometry


def resnet50_images_per_s(device: torch.device, batch: int = 16, steps: int = 3) -> float:
    """Training throughput of torchvision ResNet-50 (224 px, SGD) on this device."""
    import torchvision

    model = torchvision.models.resnet50(num_classes=1000).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--images-per-s", type=float, default=2500.0)
    parser.add_argument(
        "--measure-resnet50", action="store_true", help="time ResNet-50 steps here instead"
    )
    parser.add_argument("--train-images", type=int, default=115_846)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    w = torch.randn(args.classes, args.dim, device=device)
    counts = [int(1280 * 0.005 ** (c / (args.classes - 1))) + 5 for c in range(args.classes)]
    class_geometry(w, counts, 0.4, True, 1024)  # warm-up
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        class_geometry(w, counts, 0.4, True, 1024)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_call = (time.perf_counter() - t0) / reps
    if args.measure_resnet50:
        args.images_per_s = resnet50_images_per_s(device)
    epoch = args.train_images / args.images_per_s
    print(
        f"class_geometry C={args.classes} d={args.dim} on {device}: {per_call * 1e3:.1f} ms; "
        f"one epoch at {args.images_per_s:g} images/s = {epoch:.0f} s; "
        f"share {100 * per_call / epoch:.4f} %"
    )


if __name__ == "__main__":
    main()
