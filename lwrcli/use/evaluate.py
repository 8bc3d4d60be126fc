"""`lwr eval`: a checkpoint on a prepared dataset's split -> top-1/top-5, shot groups, per class.

Raw logits are the default for every training loss. Post-hoc logit adjustment
(z - tau * log pi) and tau-normalisation of the classifier (w_c / |w_c|^tau, bias dropped
like the reference unless kept) are explicit options, with tau fixed or picked on the
validation split (never on test); the summary names the adjustment and its bias treatment.
A multi-expert checkpoint is scored for every expert and for their aggregate, uniform or
learnt on the test images by TSA (`aggregate`, lwrcli.use.aggregate).
"""

from __future__ import annotations

import json
import os
import re
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
from lwrcli.models import build_model, get_classifier, get_classifiers
from lwrcli.models.features import head_inputs
from lwrcli.runtime.device import eval_amp, resolve_device
from lwrcli.runtime.distributed import DistInfo
from lwrcli.runtime.results import check_results_folder, results_folder
from lwrcli.train.metrics import (
    confusion_matrix,
    rounded,
    summarize,
    write_confusion_csv,
    write_per_class_csv,
)
from lwrcli.train.resolve import resolve_config
from lwrcli.train.rundir import RUN_INFO, read_run_info
from lwrcli.use.aggregate import (
    AGGREGATES,
    Scored,
    TSAOptions,
    learn_aggregation,
    score_experts,
    view_padding,
)
from lwrcli.use.posthoc import Adjustment, crop_logits, search_posthoc, search_tau_norm

__all__ = ["crop_logits", "evaluate_checkpoint", "load_model"]  # crop_logits: posthoc's


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_dataset(checkpoint: Path) -> Path | None:
    """The prepared dataset a run trained on, as its run.json records it, for a checkpoint in
    RUN/checkpoints/; None for a checkpoint elsewhere or a run without the record."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name != "checkpoints":
        return None
    info = checkpoint.parent.parent / RUN_INFO
    if not info.is_file():
        return None
    recorded = read_run_info(info).get("data_dir")
    return Path(recorded) if recorded else None


def find_dataset(checkpoint: Path, data_dir: Path | None) -> Path:
    """`--data` when given, else the run's own dataset (run.json), as predict and export find it."""
    if data_dir is not None:
        return Path(data_dir)
    recorded = run_dataset(checkpoint)
    if recorded is None:
        raise UserError(
            f"lwr eval needs --data DATA_DIR: {checkpoint} is not in a run folder that records "
            "its dataset (RUN/checkpoints/ beside RUN/run.json), so the prepared dataset to "
            "score it on is unknown."
        )
    if not (recorded / "manifest.json").is_file():
        raise UserError(
            f"The run's dataset {recorded} (recorded in its run.json) is not there any more; "
            "pass --data DATA_DIR, the prepared dataset to score on."
        )
    return recorded


def default_eval_dir(checkpoint: Path, tag: str = "") -> Path:
    """RUN/eval/NAME[TAG] for a checkpoint inside a run folder, else NAME[TAG].eval beside it;
    TAG (`eval_tag`) names the split, adjustments and dataset, so different evaluations of a
    checkpoint never share a folder."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name.removesuffix(".safetensors")
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / f"{stem}{tag}"
    return checkpoint.with_name(f"{stem}{tag}.eval")


def eval_tag(
    split: str | None = None,
    adjustment: Adjustment = Adjustment(),
    searched: frozenset[str] = frozenset(),
    tte: bool = False,
    raw_weights: bool = False,
    dataset: str | None = None,
    aggregate: str = "uniform",
) -> str:
    """The folder name's suffix of one evaluation: `-val` (a split other than test),
    `-taunorm1`/`-taunorm-search` (`-keepbias`), `-posthoc0.5`/`-posthoc-search`, `-tte`,
    `-raw` (EMA checkpoints' trained weights), `-on-DATA` (another dataset than the run's)."""
    parts = [split] if split else []
    if "tau_norm" in searched:
        parts.append("taunorm-search")
    elif adjustment.tau_norm is not None:
        parts.append(f"taunorm{adjustment.tau_norm:g}")
    if adjustment.keep_bias and (adjustment.tau_norm is not None or "tau_norm" in searched):
        parts.append("keepbias")
    if "posthoc_tau" in searched:
        parts.append("posthoc-search")
    elif adjustment.posthoc_tau is not None:
        parts.append(f"posthoc{adjustment.posthoc_tau:g}")
    parts += ["tte"] * tte + ["raw"] * raw_weights + ["tsa"] * (aggregate == "tsa")
    if dataset:
        parts.append(f"on-{re.sub(r'[^A-Za-z0-9._=-]+', '_', dataset)}")
    return "".join(f"-{p}" for p in parts)


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
    `lwr eval` mode writes (floats at 6 significant digits)."""
    out.mkdir(parents=True, exist_ok=True)
    split_counts = torch.bincount(targets, minlength=manifest.num_classes).tolist()
    split = str(summary.get("split") or manifest.test_split)
    write_per_class_csv(
        out / "per_class.csv", per_class, manifest.class_names, counts, split_counts, split
    )
    (out / "summary.json").write_text(json.dumps(rounded(summary), indent=2) + "\n")
    if confusion:
        cm = confusion_matrix(logits.argmax(1), targets, manifest.num_classes)
        write_confusion_csv(out / "confusion.csv", cm, manifest.class_names)


def _no_val_error(data_dir: Path, option: str) -> UserError:
    return UserError(
        f"{option} picks τ on the validation split, and dataset {data_dir} has none; τ is "
        "never picked on the test split (that would report an optimistic accuracy). Prepare "
        "the dataset with a validation split, or pass a fixed τ (--tau-norm / --posthoc-tau)."
    )


def evaluate_checkpoint(
    checkpoint: Path,
    data_dir: Path | None = None,
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
    workers: int | None = None,
    overwrite: bool = False,
    default_out: bool = False,
    aggregate: str = "uniform",
    tsa: TSAOptions | None = None,
) -> dict[str, Any]:
    """Scores of `checkpoint` on a split; τ-norm and post-hoc τ fixed, or picked on val;
    `tte`: LIFT's test-time ensemble (large-image datasets). A checkpoint with an EMA is
    scored on the average unless `raw_weights`. `data_dir` None: the run's own dataset.

    The outputs go to `out`, or with `default_out` to the folder named after the checkpoint,
    split and adjustments (`default_eval_dir`); a folder with results is refused unless
    `overwrite` (lwrcli.runtime.results), before the images are scored. A multi-expert
    checkpoint is scored per expert too, its experts aggregated uniformly or by TSA weights
    learnt on the split's images (`aggregate`, `tsa`: lwrcli.use.aggregate)."""
    _check_aggregate(aggregate, tau_norm, posthoc_tau, tau_norm_search, posthoc_tau_search, tte)
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
    own, from_run = run_dataset(checkpoint), data_dir is None
    data_dir = find_dataset(checkpoint, data_dir)
    manifest = read_manifest(data_dir)
    check_compatible(ckpt, manifest, data_dir)
    recorded = ckpt.meta.get("dataset_fingerprint")
    if from_run and recorded and manifest.fingerprint != recorded:
        raise UserError(
            f"The run's dataset {data_dir} was prepared again since the run trained on it "
            f"(fingerprint {manifest.fingerprint}, the checkpoint's {recorded}): its test "
            f"images may be other ones. Pass --data {data_dir} to score on it anyway."
        )
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
    searched = frozenset(
        k for k, on in (("tau_norm", tau_norm_search), ("posthoc_tau", posthoc_tau_search)) if on
    )
    given = out is not None
    if out is None and default_out:
        other = own is None or Path(os.path.abspath(data_dir)) != Path(os.path.abspath(own))
        tag = eval_tag(
            split if split != manifest.test_split else None,
            Adjustment(tau_norm, posthoc_tau, keep_bias),
            searched,
            tte,
            raw_weights,
            Path(os.path.abspath(data_dir)).name if own is not None and other else None,
            aggregate,
        )
        out = default_eval_dir(checkpoint, tag)
    inputs = (Path(checkpoint), data_dir)
    cfg = ckpt.config.model_copy(deep=True)
    cfg.device = device  # type: ignore[assignment]
    if batch_size is not None:
        cfg.eval_batch_size = batch_size
    if workers is not None:
        cfg.data.num_workers = workers
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
    experts = len(get_classifiers(model)) > 1
    if aggregate == "tsa" and not experts:
        raise UserError(
            f"--aggregate tsa weights the experts of a multi-expert checkpoint; {checkpoint} "
            "has one classifier (train with model.variant.name=experts)."
        )
    if out is not None:  # before the images are scored (the checkpoint's own errors first)
        check_results_folder(out, overwrite, inputs, given)
    head = get_classifier(model)
    # The checkpoint's own train counts define pi and the shot groups (what it was trained on).
    counts = ckpt.class_counts
    Adjustment(posthoc_tau=posthoc_tau).check(counts)
    if experts:
        amp = eval_amp(cfg.amp, dev)
        weights, aggregation = None, {"rule": "uniform"}
        if aggregate == "tsa":
            options = tsa or TSAOptions()
            pad = view_padding(cfg.data.image_size, manifest.storage, cfg.data.crop_padding)
            learnt = learn_aggregation(model, data.evals[split], amp, pad, options)
            weights = torch.tensor(learnt.weights)
            aggregation = learnt.record(options, split, f"crop (zero padding {pad}) + flip")
        scored = score_experts(
            model, data.evals, split, val, amp, counts,
            Adjustment(tau_norm, posthoc_tau, keep_bias), searched, weights,
        )  # fmt: skip
        k = len(get_classifiers(model))
        aggregation.setdefault("weights", [1.0 / k] * k)
        scored.record = {"aggregation": aggregation, **scored.record}
    else:
        scored = _score_one_head(
            model, head, data.evals, splits, split, val, eval_amp(cfg.amp, dev), counts,
            Adjustment(tau_norm, posthoc_tau, keep_bias), tau_norm_search, posthoc_tau_search,
        )  # fmt: skip
    logits, adjustment = scored.logits, scored.adjustment
    summary = summarize(logits, scored.targets, counts)
    per_class = summary.pop("per_class")
    summary.update(
        {
            "checkpoint": str(checkpoint),
            "dataset": manifest.name,
            "data_dir": str(data_dir),
            "synthetic": manifest.synthetic,
            "split": split,
            "epoch": ckpt.epoch,
            "weights": ckpt.meta.get("weights", "raw"),  # "ema": the moving average
            **adjustment.record(head, scored.picked_on),
            "tte": tte,
            **({"search": scored.searches} if scored.searches else {}),
            **scored.record,
        }
    )
    if out is not None:
        with results_folder(out, overwrite, inputs, given) as staging:
            target = scored.targets
            write_outputs(staging, summary, per_class, manifest, counts, logits, target, confusion)
        summary["outputs"] = str(out)
    return summary


def _check_aggregate(
    aggregate: str,
    tau_norm: float | None,
    posthoc_tau: float | None,
    tau_norm_search: bool,
    posthoc_tau_search: bool,
    tte: bool,
) -> None:
    if aggregate not in AGGREGATES:
        raise UserError(f"--aggregate must be {' or '.join(AGGREGATES)}, got '{aggregate}'.")
    adjusted = tau_norm is not None or posthoc_tau is not None
    if aggregate == "tsa" and (adjusted or tau_norm_search or posthoc_tau_search or tte):
        raise UserError(
            "--aggregate tsa learns the experts' weights on their raw logits of single images: "
            "give it without --tau-norm, --posthoc-tau, their searches and --tte."
        )


def _score_one_head(
    model: nn.Module,
    head: nn.Module,
    evals: dict[str, Any],
    splits: list[str],
    split: str,
    val: str | None,
    amp: str,
    counts: list[int],
    asked: Adjustment,
    tau_norm_search: bool,
    posthoc_tau_search: bool,
) -> Scored:
    """Logits of `split` from the head's input features (one backbone pass per split), with
    τ-norm and post-hoc τ fixed or picked on `val`."""
    tau_norm, posthoc_tau, keep_bias = asked.tau_norm, asked.posthoc_tau, asked.keep_bias
    feats = {s: _features(model, evals[s], amp) for s in splits}
    targets = {s: y.cpu() for s, (_, y) in feats.items()}
    searches, picked_on = {}, {}
    with torch.no_grad():
        if tau_norm_search:
            found = search_tau_norm(head, *feats[val], keep_bias)  # type: ignore[index]
            tau_norm, searches["tau_norm"] = found.tau, found.record(val)  # type: ignore[arg-type]
            picked_on["tau_norm"] = val
        if posthoc_tau_search:
            normed = Adjustment(tau_norm, None, keep_bias).logits(head, feats[val][0], counts)  # type: ignore[index]
            found = search_posthoc(normed, targets[val], counts)  # type: ignore[index]
            posthoc_tau, searches["posthoc_tau"] = found.tau, found.record(val)  # type: ignore[arg-type]
            picked_on["posthoc_tau"] = val
        adjustment = Adjustment(tau_norm, posthoc_tau, keep_bias)
        logits = adjustment.logits(head, feats[split][0], counts)
    return Scored(logits, targets[split], adjustment, searches, picked_on, {})  # type: ignore[arg-type]
