"""Small-image training throughput: lwr's device-resident pipeline vs the reference loop.

The reference is what the LDAM-DRW code does: a torchvision dataset that builds a PIL image per
sample, RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, and a
DataLoader with workers. Both feed the same ResNet-32 (batch 128, SGD) in the same process, so
the printed ratios compare like with like on whatever machine runs this. Absolute numbers are
only meaningful on a named GPU.

    python benchmarks/bench_pipeline.py [--steps 30] [--workers 2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from lwrcli.config import ModelConfig
from lwrcli.data.device_loader import DeviceImageLoader
from lwrcli.models import build_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class PILArrayDataset(Dataset):
    """Like torchvision.datasets.CIFAR10: HWC uint8 array, a PIL image made per sample."""

    def __init__(self, data: np.ndarray, labels: np.ndarray, transform: transforms.Compose):
        self.data, self.labels, self.transform = data, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[i])), int(self.labels[i])


def reference_loader(data: np.ndarray, labels: np.ndarray, batch: int, workers: int) -> DataLoader:
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    return DataLoader(
        PILArrayDataset(data, labels, tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def run(loader, device: torch.device, steps: int, train_model: bool) -> float:
    """Images per second over `steps` batches (after 3 warm-up batches)."""
    model = build_model(ModelConfig(name="resnet32"), 100).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    seen, t0 = 0, 0.0
    it = iter(loader)
    for i in range(steps + 3):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if train_model:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        elif i > 2:
            seen += y.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=10847, help="dataset size (CIFAR-100-LT IF 100)")
    args = ap.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, args.n)
    ref = reference_loader(data, labels, args.batch, args.workers)
    ours = DeviceImageLoader(
        torch.from_numpy(data).permute(0, 3, 1, 2).contiguous().to(device),
        torch.from_numpy(labels).to(device),
        args.batch,
        MEAN,
        STD,
        train=True,
        padding=4,
        flip=True,
    )
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "workers": args.workers,
    }
    for label, train_model in (("data_only", False), ("train_step", True)):
        r = run(ref, device, args.steps, train_model)
        o = run(ours, device, args.steps, train_model)
        result[label] = {
            "reference_img_s": round(r, 1),
            "lwr_img_s": round(o, 1),
            "ratio": round(o / r, 2),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
