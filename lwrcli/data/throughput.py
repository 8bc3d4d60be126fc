"""Loader throughput (read + decode + training transforms + normalisation, images/s on the
CPU), for `prepare-data --benchmark` and benchmarks/bench_loader.py: tells a data bottleneck
from a compute one before a long run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lwrcli.config import DataConfig
from lwrcli.data.image_loader import build_image_loader, to_device
from lwrcli.data.manifest import read_manifest


def loader_benchmark(
    data_dir: Path,
    data_cfg: DataConfig,
    split: str = "train",
    batch_size: int = 64,
    num_batches: int = 20,
    workers: int | None = None,
) -> dict[str, Any]:
    """Images/s of reading + decoding + training transforms + normalisation on the CPU, to
    tell a data bottleneck from compute. Worker start-up and the first batch are not timed;
    small datasets are cycled through."""
    if workers is not None:
        data_cfg = data_cfg.model_copy(update={"num_workers": workers})
    manifest = read_manifest(data_dir)
    batch_size = min(batch_size, manifest.splits.get(split, batch_size))  # full batches only
    loader = build_image_loader(data_dir, manifest, split, data_cfg, batch_size, True, 0)
    cpu = torch.device("cpu")

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            yield from loader
            epoch += 1

    stream = batches()
    to_device(next(stream), cpu)
    seen, t0 = 0, time.perf_counter()
    for _ in range(num_batches):
        x, _ = to_device(next(stream), cpu)
        seen += x.shape[0]
    elapsed = time.perf_counter() - t0
    return {
        "images_per_s": round(seen / max(elapsed, 1e-9), 1),
        "images": seen,
        "seconds": round(elapsed, 3),
        "workers": data_cfg.num_workers,
        "image_size": data_cfg.image_size,
        "batch_size": batch_size,
        "color_jitter": data_cfg.color_jitter,
    }
