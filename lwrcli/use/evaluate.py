"""`lwr eval`: a checkpoint on a prepared dataset's split -> top-1/top-5, shot groups, per class.

Raw logits are the default for every training loss. Post-hoc logit adjustment
(z - tau * log pi) and tau-normalisation of the classifier (w_c / |w_c|^tau, bias dropped
like the reference unless kept) are explicit options, with tau fixed or picked on the
validation split (never on test); the summary names the adjustment and its bias treatment.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lwrcli.checkpoint.files import Checkpoint, load_checkpoint
from lwrcli.checkpoint.frozen_base import restore_weights
from lwrcli.data.loading import BatchLoader, build_data
from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.errors import UserError
from lwrcli.methods.losses import posthoc_logit_adjust
from lwrcli.models import build_model, get_classifier
from lwrcli.models.features import head_inputs
from lwrcli.runtime.device import eval_amp, resolve_device
from lwrcli.runtime.distributed import DistInfo
from lwrcli.train.metrics import confusion_matrix, summarize, write_per_class_csv
from lwrcli.train.resolve import resolve_config
from lwrcli.use.posthoc import bias_treatment, head_logits, search_posthoc, search_tau_norm


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def default_eval_dir(checkpoint: Path, split: str | None) -> Path:
    """RUN/eval/NAME[-split] for a checkpoint inside a run folder, else NAME.eval beside it."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name.removesuffix(".safetensors")
    suffix = f"-{split}" if split else ""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / f"{stem}{suffix}"
    return checkpoint.with_name(f"{stem}{suffix}.eval")


@torch.no_grad()
def check_compatible(ckpt: Checkpoint, manifest: Manifest, data_dir: Path) -> None:
    """A checkpoint only makes sense on a dataset with the same classes."""
    c_ckpt = ckpt.classifier_weight.shape[0]
    if c_ckpt != manifest.num_classes:
        raise UserError(
            f"Class-count mismatch: checkpoint {ckpt.path} has {c_ckpt} classes but dataset "
            f"{data_dir} has {manifest.num_classes}. Evaluate it on the dataset it was "
            "trained on."
        )


def load_model(ckpt: Checkpoint, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model as trained (an LWS run's head keeps its scales)."""
    model = build_model(
        ckpt.config.model, ckpt.classifier_weight.shape[0], class_names=ckpt.class_names
    )
    for method in ckpt.config.methods():  # what the methods changed (LWS's head)
        model = method.eval_structure(model, ckpt.config)
    try:
        restore_weights(model, ckpt)
    except RuntimeError as exc:
        raise UserError(
            f"Checkpoint {ckpt.path} does not match its own model config "
            f"({str(exc).splitlines()[0]})."
        ) from None
    return model.to(device).eval()


def _features(model: nn.Module, loader: BatchLoader, amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    batches = head_inputs(model, loader, amp)
    return torch.cat([f for f, _ in batches]), torch.cat([y for _, y in batches])


def crop_logits(
    head: nn.Module, features: torch.Tensor, tau_norm: float | None, keep_bias: bool
) -> torch.Tensor:
    """head_logits of features (N, d), or of test-time-ensemble features (N, K, d) averaged
    over the K crops."""
    if features.dim() == 2:
        return head_logits(head, features, tau_norm, keep_bias)
    n, k, _ = features.shape
    return head_logits(head, features.flatten(0, 1), tau_norm, keep_bias).view(n, k, -1).mean(1)


def write_outputs(
    out: Path,
    summary: dict[str, Any],
    per_class: Any,
    manifest: Manifest,
    counts: list[int],
    logits: torch.Tensor,
    targets: torch.Tensor,
    confusion: bool,
) -> None:
    """per_class.csv, summary.json and (when asked) confusion.csv in `out`: what every
    `lwr eval` mode writes."""
    out.mkdir(parents=True, exist_ok=True)
    test_counts = torch.bincount(targets, minlength=manifest.num_classes).tolist()
    write_per_class_csv(out / "per_class.csv", per_class, manifest.class_names, counts, test_counts)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if confusion:
        cm = confusion_matrix(logits.argmax(1), targets, manifest.num_classes)
        lines = [",".join(map(str, row)) for row in cm.tolist()]
        (out / "confusion.csv").write_text("\n".join(lines) + "\n")


def _no_val_error(data_dir: Path, option: str) -> UserError:
    return UserError(
        f"{option} picks τ on the validation split, and dataset {data_dir} has none; τ is "
        "never picked on the test split (that would report an optimistic accuracy). Prepare "
        "the dataset with a validation split, or pass a fixed τ (--tau-norm / --posthoc-tau)."
    )


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
    keep_bias: bool = False,
    tau_norm_search: bool = False,
    posthoc_tau_search: bool = False,
    tte: bool = False,
    raw_weights: bool = False,
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Scores of `checkpoint` on a split; τ-norm and post-hoc τ fixed, or picked on val;
    `tte`: LIFT's test-time ensemble (large-image datasets). A checkpoint with an EMA is
    scored on the average unless `raw_weights`."""
    if tau_norm_search and tau_norm is not None:
        raise UserError("Give --tau-norm τ or --tau-norm-search, not both.")
    if posthoc_tau_search and posthoc_tau is not None:
        raise UserError("Give --posthoc-tau τ or --posthoc-tau-search, not both.")
    if tte and tau_norm_search:
        raise UserError(
            "--tte with --tau-norm-search is not supported; pick τ without --tte, then pass "
            "it with --tau-norm τ --tte."
        )
    ckpt = load_checkpoint(checkpoint, weights="raw" if raw_weights else "ema")
    manifest = read_manifest(data_dir)
    check_compatible(ckpt, manifest, data_dir)
    split = split or manifest.test_split
    if split not in manifest.splits:
        raise UserError(
            f"Dataset {data_dir} has no '{split}' split; it has {', '.join(manifest.splits)}."
        )
    val = manifest.val_split if manifest.val_split in manifest.splits else None
    searching = tau_norm_search or posthoc_tau_search
    if searching and val is None:
        raise _no_val_error(
            data_dir, "--tau-norm-search" if tau_norm_search else "--posthoc-tau-search"
        )
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder.")
    cfg = ckpt.config.model_copy(deep=True)
    cfg.device = device  # type: ignore[assignment]
    if batch_size is not None:
        cfg.eval_batch_size = batch_size
    cfg.eval_tte = tte
    dev = resolve_device(cfg.device)
    # The checkpoint's config was resolved when it trained; an older one may lack what the
    # resolve step adds now (a fixed-size model's input size on small-image arrays).
    resolved = resolve_config(cfg, dev, manifest.storage, manifest.num_classes, manifest.image_size)
    cfg = resolved.cfg
    for note in resolved.notes:
        log(note)
    splits = [split] + ([val] if searching and val != split else [])
    data = build_data(data_dir, cfg, dev, DistInfo(), train=False, splits=splits)  # type: ignore[arg-type]
    model = load_model(ckpt, dev)
    head = get_classifier(model)
    feats = {s: _features(model, data.evals[s], eval_amp(cfg.amp, dev)) for s in splits}
    # The checkpoint's own train counts define pi and the shot groups (what it was trained on).
    counts = ckpt.class_counts
    adjustments, searches = [], {}
    with torch.no_grad():
        if tau_norm_search:
            found = search_tau_norm(head, *feats[val], keep_bias)  # type: ignore[index]
            tau_norm, searches["tau_norm"] = found.tau, found.record(val)  # type: ignore[arg-type]
        logits = {s: crop_logits(head, f, tau_norm, keep_bias).cpu() for s, (f, _) in feats.items()}
    targets = {s: y.cpu() for s, (_, y) in feats.items()}
    if tau_norm is not None:
        picked = f" (picked on {val})" if tau_norm_search else ""
        adjustments.append(f"τ-norm {tau_norm:g}{picked}, {bias_treatment(head, keep_bias)}")
    if posthoc_tau_search:
        found = search_posthoc(logits[val], targets[val], counts)  # type: ignore[index]
        posthoc_tau, searches["posthoc_tau"] = found.tau, found.record(val)  # type: ignore[arg-type]
    if posthoc_tau is not None:
        prior = torch.tensor(counts, dtype=torch.float64)
        logits[split] = posthoc_logit_adjust(logits[split], prior, posthoc_tau)
        picked = f" (picked on {val})" if posthoc_tau_search else ""
        adjustments.append(f"post-hoc logit adjustment τ={posthoc_tau:g}{picked}")
    summary = summarize(logits[split], targets[split], counts)
    per_class = summary.pop("per_class")
    summary.update(
        {
            "checkpoint": str(checkpoint),
            "dataset": manifest.name,
            "synthetic": manifest.synthetic,
            "split": split,
            "epoch": ckpt.epoch,
            "weights": ckpt.meta.get("weights", "raw"),  # "ema": the moving average
            "adjustment": "; ".join(adjustments) or "none (raw logits)",
            "tau_norm": tau_norm,
            "tau_norm_bias": bias_treatment(head, keep_bias) if tau_norm is not None else None,
            "posthoc_tau": posthoc_tau,
            "tte": tte,
            **({"search": searches} if searches else {}),
        }
    )
    if out is not None:
        write_outputs(
            out, summary, per_class, manifest, counts, logits[split], targets[split], confusion
        )
        summary["outputs"] = str(out)
    return summary
