"""`lwr eval --zero-shot clip:<arch>`: a CLIP model scored with its text head, no training.

The classifier is the one `model.head_init: text` builds (the image tower, and a cosine head
whose rows are the class names' prompt-ensemble text embeddings), so zero-shot is exactly the
starting point of a text-initialised fine-tuning run (LIFT's zero-shot row). It goes through
the same loaders, scoring and outputs as `lwr eval`; the cosine scale is irrelevant to the
argmax and only shapes the logits' softmax. Shot groups come from the dataset's train counts,
or from the published groups of an evaluation-only ImageNet-LT.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lwrcli.config import ModelConfig, TrainConfig
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import group_counts, read_manifest
from lwrcli.errors import UserError
from lwrcli.models import build_model
from lwrcli.runtime.device import eval_amp, resolve_device
from lwrcli.runtime.distributed import DistInfo
from lwrcli.runtime.results import check_results_folder, results_folder
from lwrcli.train.metrics import summarize
from lwrcli.train.resolve import resolve_config
from lwrcli.train.scoring import predict
from lwrcli.use.evaluate import write_outputs

ZERO_SHOT_SCALE = 100.0  # CLIP's logit scale (exp of its learned temperature, clamped at 100)


def zero_shot_config(
    name: str,
    weights: str | None = None,
    pretrained: Path | None = None,
    templates: str = "openai",
    device: str = "auto",
    tte: bool = False,
) -> TrainConfig:
    """The evaluation config of a zero-shot CLIP classifier, before it is resolved for a
    dataset (lwrcli.train.resolve: input size and normalisation from the model)."""
    if not name.startswith("clip:"):
        raise UserError(
            f"--zero-shot needs a CLIP model, clip:<arch> (e.g. clip:ViT-B-16), not '{name}'."
        )
    try:
        model = ModelConfig(
            name=name,
            weights=weights,
            pretrained=pretrained,
            head={"name": "cosine", "scale": ZERO_SHOT_SCALE},
            head_init="text",
            clip_projection=True,  # CLIP's own zero-shot geometry: the joint space
            text_templates=templates,  # type: ignore[arg-type]
        )
        cfg = TrainConfig(name="zero-shot", model=model, device=device, eval_tte=tte)  # type: ignore[arg-type]
    except ValidationError as exc:
        why = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise UserError(f"--zero-shot {name}: {why.rstrip('.?!')}.") from None
    return cfg


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def default_zero_shot_dir(
    name: str, data_dir: Path, split: str | None = None, tte: bool = False
) -> Path:
    """zero-shot-<arch>-<dataset folder>[-<split>][-tte] in the current folder (a split given
    other than test, and the test-time ensemble, named: different evaluations never share a
    folder)."""
    arch = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.partition(":")[2]).stem)
    tag = (f"-{split}" if split not in (None, "test") else "") + ("-tte" if tte else "")
    return Path(f"zero-shot-{arch}-{Path(data_dir).name}{tag}")


def evaluate_zero_shot(
    name: str,
    data_dir: Path,
    out: Path | None = None,
    split: str | None = None,
    weights: str | None = None,
    pretrained: Path | None = None,
    templates: str = "openai",
    tte: bool = False,
    confusion: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    log: Callable[[str], None] = _stderr,
    workers: int | None = None,
    overwrite: bool = False,
    default_out: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5, shot groups and per-class accuracy of CLIP's text head on a split; `log`
    receives what resolving decided (an input size the model needs). The outputs go to `out`,
    or with `default_out` to `default_zero_shot_dir`; a folder with results is refused unless
    `overwrite` (lwrcli.runtime.results)."""
    manifest = read_manifest(data_dir)
    split = split or manifest.test_split
    if split not in manifest.splits:
        raise UserError(
            f"Dataset {data_dir} has no '{split}' split; it has {', '.join(manifest.splits)}."
        )
    inputs = [Path(data_dir), *([Path(pretrained)] if pretrained else [])]
    given = out is not None
    if out is None and default_out:
        out = default_zero_shot_dir(name, data_dir, split, tte)
    if out is not None:
        check_results_folder(out, overwrite, inputs, given)
    cfg = zero_shot_config(name, weights, pretrained, templates, device, tte)
    if batch_size is not None:
        cfg.eval_batch_size = batch_size
    if workers is not None:
        cfg.data.num_workers = workers
    dev = resolve_device(cfg.device)
    resolved = resolve_config(cfg, dev, manifest.storage, manifest.num_classes, manifest.image_size)
    cfg = resolved.cfg
    for note in resolved.notes:
        log(note)
    data = build_data(data_dir, cfg, dev, DistInfo(), train=False, splits=[split])
    model = build_model(cfg.model, manifest.num_classes, class_names=manifest.class_names)
    amp = eval_amp("auto", dev)
    logits, targets = predict(model.to(dev), data.evals[split], dev, amp, DistInfo())
    logits, targets = logits.cpu(), targets.cpu()
    counts = group_counts(manifest)
    summary = summarize(logits, targets, counts)
    per_class = summary.pop("per_class")
    summary.update(
        {
            "checkpoint": None,
            "zero_shot": name,
            "weights": weights,
            "pretrained": str(pretrained) if pretrained else None,
            "templates": templates,
            "class_names_source": manifest.class_names_source,
            "dataset": manifest.name,
            "synthetic": manifest.synthetic,
            "split": split,
            "epoch": None,
            "adjustment": "none (raw logits)",
            "tte": tte,
            "shot_groups_from": "train counts"
            if manifest.class_counts_known
            else "published shot groups (train counts unknown)",
        }
    )
    if out is not None:
        with results_folder(out, overwrite, inputs, given) as staging:
            write_outputs(staging, summary, per_class, manifest, counts, logits, targets, confusion)
        summary["outputs"] = str(out)
    return summary
