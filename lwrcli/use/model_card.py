"""`model-card.md` for an exported model: what it is, what it takes, how well it did, and how
it was made, from the checkpoint's own record (and its run folder's, when it sits in one).

Everything here is read from files lwr wrote; nothing is re-measured, so the accuracy shown
is the one the checkpoint's metrics record holds (the split and epoch are named).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from lwrcli import __version__
from lwrcli.checkpoint.files import Checkpoint
from lwrcli.config import config_to_yaml
from lwrcli.data.manifest import GROUPS, Manifest, shot_groups
from lwrcli.use.export_contract import InputContract

SCORES = ("top1", "top5", "many", "medium", "few")


def training_command(ckpt: Checkpoint) -> str | None:
    """The command line that trained the checkpoint: argv in its run folder's
    environment.json, or None outside a run folder."""
    if ckpt.path is None or ckpt.path.parent.name != "checkpoints":
        return None
    env = ckpt.path.parent.parent / "environment.json"
    try:
        argv = json.loads(env.read_text(encoding="utf-8")).get("argv")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(argv, list) or not argv:
        return None
    argv = [str(a) for a in argv]
    if argv[0].endswith(("/lwr", "lwrcli/__main__.py")) or Path(argv[0]).name == "lwr":
        argv[0] = "lwr"
    return shlex.join(argv)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def accuracy_table(metrics: dict[str, Any]) -> list[str]:
    """Rows of split x (top1, top5, many, medium, few) that the record holds."""
    rows = []
    for split in ("test", "val"):
        values = [metrics.get(f"{split}_{s}") for s in SCORES]
        if any(v is not None for v in values):
            rows.append(f"| {split} | " + " | ".join(_fmt(v) for v in values) + " |")
    if not rows:
        return ["No accuracy in the checkpoint's record (it was saved before an evaluation)."]
    head = ["| split | " + " | ".join(SCORES) + " |", "|---" * (len(SCORES) + 1) + "|"]
    return head + rows


def class_summary(counts: list[int], names: list[str]) -> list[str]:
    """C, max/min, imbalance factor, shot-group sizes, and the full list (collapsed)."""
    groups = shot_groups(counts)
    positive = [n for n in counts if n > 0]
    factor = f"{max(positive) / min(positive):.4g}" if positive else "—"
    lines = [
        f"- classes C = {len(counts)}; train images {sum(counts)}",
        f"- most / fewest images per class: {max(counts, default=0)} / {min(counts, default=0)}"
        f"; imbalance factor {factor}",
        "- shot groups (many > 100, medium 20–100, few < 20 train images): "
        + ", ".join(f"{g} {len(groups[g])}" for g in GROUPS),
        "",
        "<details><summary>All classes (id, name, train images, shot group)</summary>",
        "",
        "| id | name | train images | group |",
        "|---|---|---|---|",
    ]
    group_of = {c: g for g, ids in groups.items() for c in ids}
    for c, (name, n) in enumerate(zip(names, counts)):
        lines.append(f"| {c} | {name.replace('|', '/')} | {n} | {group_of.get(c, '')} |")
    return [*lines, "", "</details>"]


def write_model_card(
    path: Path,
    ckpt: Checkpoint,
    manifest: Manifest | None,
    contract: InputContract,
    fmt: str,
    exporter: str,
    diff: float,
    command: str | None = None,
) -> None:
    """Write model-card.md: the input contract first (what a consumer needs), then the
    dataset, accuracy, geometry, provenance and the full config."""
    cfg, metrics = ckpt.config, ckpt.metrics
    dataset = manifest.name if manifest is not None else cfg.dataset
    synthetic = manifest is not None and manifest.synthetic
    geometry = {k: v for k, v in metrics.items() if k.startswith("geom_")}
    trained_by = training_command(ckpt)
    lines = [
        f"# Model card: {cfg.name} ({cfg.model.name})",
        "",
        f"Exported by lwr {__version__} as {fmt} ({exporter}) from `{ckpt.path}` "
        f"(epoch {ckpt.epoch}). The exported logits matched PyTorch's to {diff:.2g} (max abs).",
        "",
        "## Input contract",
        "",
        contract.describe(),
        "",
        "```json",
        json.dumps(contract.to_json(), indent=2),
        "```",
        "",
        "## Dataset",
        "",
        f"- name: {dataset}" + (" (SYNTHETIC data)" if synthetic else ""),
        f"- fingerprint: `{ckpt.meta.get('dataset_fingerprint', 'not recorded')}`",
        *class_summary(ckpt.class_counts, ckpt.class_names),
        "",
        f"## Accuracy (top-1 %, the checkpoint's record, epoch {metrics.get('epoch', ckpt.epoch)})",
        "",
        *accuracy_table(metrics),
        "",
        "## Geometry of the class vectors",
        "",
    ]
    if geometry:
        lines += ["| field | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in geometry.items()]
    else:
        lines.append("Not in the checkpoint's record.")
    lines += ["", "## How it was made", ""]
    lines.append(f"- trained by: `{trained_by}`" if trained_by else "- trained by: not recorded")
    if command:
        lines.append(f"- exported by: `{command}`")
    lines += ["", "<details><summary>Config (YAML)</summary>", "", "```yaml"]
    lines += [config_to_yaml(cfg).rstrip(), "```", "", "</details>", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
