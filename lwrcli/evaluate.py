"""`lwr eval`: a checkpoint on a prepared dataset's split -> top-1/top-5, shot groups, per class.

Raw logits are the default for every training loss. Post-hoc logit adjustment
(z - tau * log pi) and tau-normalisation of the classifier (w_c / |w_c|^tau) are explicit
options, and the summary names the one used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwrcli.checkpoint import Checkpoint, load_checkpoint
from lwrcli.data.loading import BatchLoader, build_data
from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.device import autocast_context, eval_amp, resolve_device
from lwrcli.distributed import DistInfo, all_gather_cat
from lwrcli.errors import UserError
from lwrcli.losses import posthoc_logit_adjust, tau_normalize
from lwrcli.metrics import confusion_matrix, summarize, write_per_class_csv
from lwrcli.models import build_model

SCORES = ("top1", "top5", "many", "medium", "few")


@torch.no_grad()
def predict(
    model: nn.Module, loader: BatchLoader, device: torch.device, amp: str, dist: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) float32 and targets (N,) for a whole split, gathered over ranks."""
    model.eval()
    logits, targets = [], []
    with autocast_context(device, amp):
        for x, y in loader:
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
) -> dict[str, float | None]:
    """`{split}_{top1,top5,many,medium,few}` and `{split}_images` (how many were scored) for
    every split: what a training epoch records."""
    out: dict[str, float | None] = {}
    for split, loader in loaders.items():
        logits, targets = predict(model, loader, device, amp, dist)
        s = summarize(logits.cpu(), targets.cpu(), class_counts)
        out.update({f"{split}_{key}": s[key] for key in SCORES})
        out[f"{split}_images"] = int(targets.numel())  # all processes' predictions, gathered
    return out


def default_eval_dir(checkpoint: Path, split: str | None) -> Path:
    """RUN/eval/NAME[-split] for a checkpoint inside a run folder, else NAME.eval beside it."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name.removesuffix(".safetensors")
    suffix = f"-{split}" if split else ""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / f"{stem}{suffix}"
    return checkpoint.with_name(f"{stem}{suffix}.eval")


def check_compatible(ckpt: Checkpoint, manifest: Manifest, data_dir: Path) -> None:
    """A checkpoint only makes sense on a dataset with the same classes."""
    c_ckpt = ckpt.classifier_weight.shape[0]
    if c_ckpt != manifest.num_classes:
        raise UserError(
            f"Class-count mismatch: checkpoint {ckpt.path} has {c_ckpt} classes but dataset "
            f"{data_dir} has {manifest.num_classes}. Evaluate it on the dataset it was "
            "trained on."
        )


def load_model(ckpt: Checkpoint, device: torch.device, tau_norm: float | None) -> torch.nn.Module:
    model = build_model(ckpt.config.model, ckpt.classifier_weight.shape[0])
    state = dict(ckpt.state)
    if tau_norm is not None:
        state[ckpt.classifier_key] = tau_normalize(state[ckpt.classifier_key], tau_norm)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(
            f"Checkpoint {ckpt.path} does not match its own model config "
            f"({str(exc).splitlines()[0]})."
        ) from None
    return model.to(device).eval()


def evaluate_checkpoint(
    checkpoint: Path,
    data_dir: Path,
    out: Path | None = None,
    split: str | None = None,
    posthoc_tau: float | None = None,
    tau_norm: float | None = None,
    confusion: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    manifest = read_manifest(data_dir)
    check_compatible(ckpt, manifest, data_dir)
    split = split or manifest.test_split
    if split not in manifest.splits:
        raise UserError(
            f"Dataset {data_dir} has no '{split}' split; it has {', '.join(manifest.splits)}."
        )
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder.")
    cfg = ckpt.config.model_copy(deep=True)
    cfg.device = device  # type: ignore[assignment]
    if batch_size is not None:
        cfg.eval_batch_size = batch_size
    dev = resolve_device(cfg.device)
    data = build_data(data_dir, cfg, dev, DistInfo(), train=False, splits=[split])
    model = load_model(ckpt, dev, tau_norm)
    logits, targets = predict(model, data.evals[split], dev, eval_amp(cfg.amp, dev), DistInfo())
    logits, targets = logits.cpu(), targets.cpu()
    # The checkpoint's own train counts define pi and the shot groups (what it was trained on).
    counts = ckpt.class_counts
    adjustments = []
    if tau_norm is not None:
        adjustments.append(f"tau-normalised classifier (tau={tau_norm:g})")
    if posthoc_tau is not None:
        logits = posthoc_logit_adjust(
            logits, torch.tensor(counts, dtype=torch.float64), posthoc_tau
        )
        adjustments.append(f"post-hoc logit adjustment (tau={posthoc_tau:g})")
    summary = summarize(logits, targets, counts)
    per_class = summary.pop("per_class")
    summary.update(
        {
            "checkpoint": str(checkpoint),
            "dataset": manifest.name,
            "synthetic": manifest.synthetic,
            "split": split,
            "epoch": ckpt.epoch,
            "adjustment": "; ".join(adjustments) or "none (raw logits)",
        }
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        test_counts = torch.bincount(targets, minlength=manifest.num_classes).tolist()
        write_per_class_csv(
            out / "per_class.csv", per_class, manifest.class_names, counts, test_counts
        )
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if confusion:
            cm = confusion_matrix(logits.argmax(1), targets, manifest.num_classes)
            lines = [",".join(map(str, row)) for row in cm.tolist()]
            (out / "confusion.csv").write_text("\n".join(lines) + "\n")
        summary["outputs"] = str(out)
    return summary
