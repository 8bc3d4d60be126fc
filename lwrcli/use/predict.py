"""`lwr predict`: a trained checkpoint on new images -> top-k classes per image (CSV / JSON Lines).

An image is prepared exactly as `lwr eval` prepares the images of the checkpoint's own test
split, so a prediction here equals eval's for the same file:
- large-image runs (datasets stored as lists): decoded to RGB (lwrcli.data.decode),
  shorter side to `data.resize`, centre crop `data.image_size` (LIFT's five crops with
  `--tte`), normalised by `data.mean`/`data.std` — lwrcli.data.transforms, as the eval loader;
- small-image runs (uint8 arrays: CIFAR, synthetic, small folders): the image is first made
  the stored square the way `prepare-data folder` stores one (centre crop of the shorter side,
  PIL bilinear to the stored size), then treated as the device loader treats a stored image
  at evaluation (upsampled to `data.array_resize` when set, normalised; five crops with
  `--tte`).
Which of the two, and the stored size, come from the checkpoint's metadata (written by
training since predict exists), else from the run's prepared dataset (run.json names it),
else from the dataset the recipe names (CIFAR: 32 px arrays); otherwise lists (`input_spec`).

Logits go through the same path as eval (the head's input captured, then the head, K crops'
logits averaged), and the same post-hoc adjustments with the same options
(lwrcli.use.posthoc.Adjustment): `--tau-norm T [--keep-bias]` τ-normalises the head,
`--posthoc-tau T` subtracts τ·log π with π the checkpoint's train counts, both combinable.
The old `--posthoc tau-norm|logit-adjust --tau T` still works, with a note (`legacy_posthoc`).
Probabilities are written at 6 significant digits.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch.utils.data import DataLoader

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.data.image_loader import available_cores
from lwrcli.errors import UserError
from lwrcli.models import get_classifiers
from lwrcli.runtime.device import eval_amp, resolve_device
from lwrcli.runtime.files import temp_beside
from lwrcli.train.metrics import SIG_DIGITS, rounded
from lwrcli.use.aggregate import model_logits
from lwrcli.use.evaluate import load_model
from lwrcli.use.posthoc import Adjustment
from lwrcli.use.predict_inputs import Collate, Preprocess, collect_images, input_spec

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
LEGACY_POSTHOC = ("none", "tau-norm", "logit-adjust")  # the deprecated --posthoc's choices


def output_format(out: Path) -> str:
    """'csv' or 'jsonl' from the output's extension (case-insensitive)."""
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise UserError(
            f"--out {out}: unknown output format '{Path(out).suffix or '(no extension)'}'; "
            "name the file .csv or .jsonl (JSON Lines)."
        )
    return fmt


def summary_path(out: Path) -> Path:
    """The summary written beside the predictions: preds.csv -> preds.csv.summary.json."""
    return Path(out).with_name(Path(out).name + ".summary.json")


def legacy_posthoc(
    posthoc: str | None, tau: float | None, adjustment: Adjustment
) -> tuple[Adjustment, str | None]:
    """The deprecated `--posthoc tau-norm|logit-adjust|none [--tau T]` (T defaults to 1) as the
    options eval and predict share, and the note that says so; refused when mixed with them."""
    if posthoc is None:
        if tau is not None:
            raise UserError(
                "--tau goes with the deprecated --posthoc only; give --tau-norm T or "
                "--posthoc-tau T (as lwr eval takes them)."
            )
        return adjustment, None
    if posthoc not in LEGACY_POSTHOC:
        raise UserError(
            f"--posthoc must be one of {', '.join(LEGACY_POSTHOC)}, got '{posthoc}' (and it is "
            "deprecated: use --tau-norm T and --posthoc-tau T, as lwr eval does)."
        )
    if adjustment != Adjustment(keep_bias=adjustment.keep_bias):
        raise UserError(
            "Give --tau-norm / --posthoc-tau, or the deprecated --posthoc --tau, not both."
        )
    t = 1.0 if tau is None else tau
    new = {"none": "", "tau-norm": f"--tau-norm {t:g}", "logit-adjust": f"--posthoc-tau {t:g}"}
    found = Adjustment(
        tau_norm=t if posthoc == "tau-norm" else None,
        posthoc_tau=t if posthoc == "logit-adjust" else None,
        keep_bias=adjustment.keep_bias,
    )
    instead = f"use {new[posthoc]}" if new[posthoc] else "leave it out (raw logits)"
    return found, f"note: --posthoc {posthoc} is deprecated; {instead}, as in lwr eval."


@dataclass
class Options:
    top_k: int = 5
    adjustment: Adjustment = Adjustment()  # --tau-norm, --keep-bias, --posthoc-tau
    tte: bool = False
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    overwrite: bool = False
    progress: bool | None = None  # None: a bar only when stderr is a terminal


def _check_options(opts: Options, out: Path) -> None:
    if opts.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got '{opts.device}'.")
    if opts.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {opts.top_k}.")
    output_format(out)
    for path in (out, summary_path(out)):
        if path.exists() and not opts.overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it, or another --out.")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending in .csv or .jsonl.")


def _progress(total: int, enabled: bool | None) -> Any:
    """A rich bar on stderr in a terminal (transient), else a do-nothing stand-in."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "predict", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True, markup=False), transient=True,
    )  # fmt: skip
    bar.start()
    bar.add_task("predict", total=total)
    return bar


class _Writer:
    """Rows into an open text file: CSV (path, then id/name/prob per rank) or JSON Lines."""

    def __init__(self, f: TextIO, fmt: str, k: int) -> None:
        self.f, self.fmt = f, fmt
        if fmt == "csv":
            self.csv = csv.writer(f)
            ranks = [(f"top{r}_id", f"top{r}_name", f"top{r}_prob") for r in range(1, k + 1)]
            self.csv.writerow(["path", *(c for cols in ranks for c in cols)])

    def row(self, path: str, ids: list[int], names: list[str], probs: list[float]) -> None:
        if self.fmt == "csv":
            shown = [f"{p:.{SIG_DIGITS}g}" for p in probs]
            cells = [x for triple in zip(ids, names, shown) for x in triple]
            self.csv.writerow([path, *cells])
        else:
            record = {"path": path, "ids": ids, "names": names, "probs": rounded(probs)}
            self.f.write(json.dumps(record, ensure_ascii=False) + "\n")


def predict_images(
    checkpoint: Path, inputs: Sequence[Path], out: Path, opts: Options | None = None
) -> dict[str, Any]:
    """Classify every image of `inputs` with `checkpoint`; write `out` (.csv / .jsonl) and its
    summary beside it (`summary_path`) atomically. Returns the summary; raises UserError,
    writing nothing, when no image could be classified."""
    opts = opts or Options()
    out = Path(out)
    _check_options(opts, out)
    fmt = output_format(out)
    paths = collect_images(inputs)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.config
    dev = resolve_device(opts.device)
    spec = input_spec(ckpt)
    prep = Preprocess(spec, cfg.data, opts.tte, dev)
    model = load_model(ckpt, dev)
    heads = get_classifiers(model)  # one, or every expert's (aggregated: their mean)
    head = heads[0]
    amp = eval_amp(cfg.amp, dev)
    num_classes = ckpt.classifier_weight.shape[0]
    k = min(opts.top_k, num_classes)
    names = list(ckpt.class_names) if len(ckpt.class_names) == num_classes else []
    names = names or [str(c) for c in range(num_classes)]
    adjustment, counts = opts.adjustment, ckpt.class_counts
    adjustment.check(counts)  # a prior with an empty class fails now, before any image
    workers = min(cfg.data.num_workers if opts.workers is None else opts.workers, available_cores())
    loader = DataLoader(
        prep.dataset(paths),
        batch_size=opts.batch_size or cfg.eval_batch_size,
        num_workers=workers,
        collate_fn=Collate(),
        pin_memory=dev.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
    )
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, skipped, done = temp_beside(out), [], 0
    bar = _progress(len(paths), opts.progress)
    start = time.perf_counter()
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = _Writer(f, fmt, k)
            for images, idx, bad in loader:
                skipped += [{"path": str(paths[i]), "reason": r} for i, r in bad]
                if images is not None:
                    x = prep.to_device(images, cfg.channels_last is True)
                    with torch.no_grad():
                        logits = model_logits(model, heads, x, adjustment, counts, amp)
                    probs, top = torch.softmax(logits, dim=1).topk(k, dim=1)
                    for i, ids, ps in zip(idx.tolist(), top.tolist(), probs.tolist()):
                        writer.row(str(paths[i]), ids, [names[c] for c in ids], ps)
                    done += len(idx)
                if bar is not None:
                    bar.advance(0, len(idx) + len(bad))
            f.flush()
            os.fsync(f.fileno())
        seconds = time.perf_counter() - start
        if done == 0:
            shown = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:5])
            raise UserError(
                f"None of the {len(paths)} images could be read, so nothing was written: "
                f"{shown}{' ...' if len(skipped) > 5 else ''}."
            )
        summary = {
            "checkpoint": str(checkpoint),
            "output": str(out),
            "format": fmt,
            "images": done,
            "skipped": skipped,
            "top_k": k,
            "num_classes": num_classes,
            **adjustment.record(head),
            "tte": opts.tte,
            "preprocessing": prep.spec.storage + ": " + spec.describe(cfg.data, opts.tte),
            "preprocessing_from": spec.origin,
            "device": str(dev),
            "seconds": round(seconds, 3),
            "images_per_s": round(done / seconds, 1) if seconds > 0 else None,
        }
        side = summary_path(out)
        side_tmp = temp_beside(side)
        try:
            side_tmp.write_text(json.dumps(rounded(summary), indent=2) + "\n", encoding="utf-8")
            os.replace(side_tmp, side)
        finally:
            side_tmp.unlink(missing_ok=True)
        os.replace(tmp, out)  # last: an existing output is always a complete one
        return summary
    except BaseException:
        tmp.unlink(missing_ok=True)
        for d in made:  # folders this command created, removed again (innermost first)
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    finally:
        tmp.unlink(missing_ok=True)
        if bar is not None:
            bar.stop()
