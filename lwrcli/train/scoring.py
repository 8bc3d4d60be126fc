"""Scoring a model on evaluation splits: every split's logits gathered over processes, and
the accuracies a training epoch records (lwr eval writes the full outputs: lwrcli.use)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lwrcli.data.loading import BatchLoader
from lwrcli.runtime.device import autocast_context
from lwrcli.runtime.distributed import DistInfo, all_gather_cat
from lwrcli.train.metrics import summarize

SCORES = ("top1", "top5", "many", "medium", "few")


@torch.no_grad()
def predict(
    model: nn.Module, loader: BatchLoader, device: torch.device, amp: str, dist: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) float32 and targets (N,) for a whole split, gathered over ranks. A
    test-time-ensemble batch (B, K, 3, S, S) scores each image by its K crops' mean logits
    (LIFT averages logits, not probabilities)."""
    model.eval()
    logits, targets = [], []
    with autocast_context(device, amp):
        for x, y in loader:
            if x.dim() == 5:
                out = model(x.flatten(0, 1)).float()
                logits.append(out.view(x.shape[0], x.shape[1], -1).mean(1))
            else:
                logits.append(model(x).float())
            targets.append(y)
    out = torch.cat(logits), torch.cat(targets)
    return all_gather_cat(out[0], dist), all_gather_cat(out[1], dist)


def score_splits(
    model: nn.Module,
    loaders: dict[str, BatchLoader],
    class_counts: list[int],
    device: torch.device,
    amp: str,
    dist: DistInfo,
) -> dict[str, Any]:
    """`{split}_{top1,top5,many,medium,few}`, `{split}_images` (how many were scored) and
    `{split}_per_class` (C,) top-1 % per class id (None: no image of the class in the split;
    rounded to 4 decimals) for every split: what a training epoch records. The per-class list
    is what `lwr report --html` plots against class frequency."""
    out: dict[str, Any] = {}
    for split, loader in loaders.items():
        logits, targets = predict(model, loader, device, amp, dist)
        s = summarize(logits.cpu(), targets.cpu(), class_counts)
        out.update({f"{split}_{key}": s[key] for key in SCORES})
        out[f"{split}_images"] = int(targets.numel())  # all processes' predictions, gathered
        out[f"{split}_per_class"] = [None if v is None else round(v, 4) for v in s["per_class"]]
    return out
