"""A run folder before training starts: new, left by a start that saved nothing, the same run
to continue (a torchrun restart, a SLURM requeue), or another run that must not be touched.

`lwr train --out R` run again with the same resolved config and dataset continues R; with a
different one it is refused and R is left as it was. A folder this command created is removed
again when the command ends without a checkpoint, so a corrected command can start there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.config import TrainConfig, read_yaml, validate_config
from lwrcli.errors import UserError
from lwrcli.train.live_log import TENSORBOARD_DIR, TRACKERS_FILE, WANDB_DIR

RUN_INFO = "run.json"
CONFIG = "config.yaml"
# Everything `lwr train` writes before its first checkpoint (and the folder for checkpoints).
RUN_FILES = (CONFIG, RUN_INFO, "environment.json", "metrics.jsonl", "checkpoints")
# ... and what live logging writes beside them (a start that saved nothing removes these too).
RUN_FILES += (TRACKERS_FILE, TENSORBOARD_DIR, WANDB_DIR)

Kind = Literal["new", "unstarted", "continue", "finished"]
# Speed settings that `auto` resolves per machine (and per lwr version: amp auto became bf16
# on CPUs with native bf16 in issue 27). A command that leaves one on auto continues a run
# folder with the value the run started with, so re-running it never finds "another run".
SPEED_KEYS = ("amp", "channels_last", "compile", "compile_mode")


def read_run_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"Cannot read {path}: {exc}. It is written by 'lwr train'.") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} is damaged: it should hold a JSON object.")
    return info


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def config_diff(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs, except `log` (where a run is
    logged does not change the run: a continuation may add or drop a tracker)."""
    fa, fb = (_flat(c.model_dump(mode="json", exclude={"log"})) for c in (a, b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def _saved_nothing(out: Path) -> bool:
    """Only lwr's own start-up files, and no checkpoint: a start that never saved."""
    if not {p.name for p in out.iterdir()} <= set(RUN_FILES):
        return False
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.read_text().strip():
        return False
    ckpts = out / "checkpoints"
    return not ckpts.exists() or not any(ckpts.glob("*.safetensors"))


def inspect_run_dir(
    out: Path, cfg: TrainConfig, fingerprint: str, auto: tuple[str, ...] = ()
) -> Kind:
    """What `lwr train --out OUT` finds there, for the resolved `cfg` and the dataset's
    fingerprint; raises UserError (nothing changed) for a folder holding anything else. `auto`:
    the speed settings the command left on auto, whose saved values the run keeps."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose a new --out.")
    if _saved_nothing(out):
        return "unstarted"
    last = out / "checkpoints" / "last.safetensors"
    if not (out / CONFIG).is_file() or not last.is_file():
        raise UserError(
            f"Run folder {out} already exists and is not empty, and holds no lwr run to "
            "continue (no config.yaml and checkpoints/last.safetensors); nothing was changed. "
            "Choose a new --out."
        )
    saved = validate_config(read_yaml(out / CONFIG), str(out / CONFIG))
    differs = [k for k in config_diff(saved, cfg) if k not in auto]
    known = read_run_info(out / RUN_INFO).get("dataset_fingerprint")
    if known and known != fingerprint:
        differs.append("the dataset (fingerprint)")
    if differs:
        shown = ", ".join(differs[:8]) + (
            f" and {len(differs) - 8} more" if len(differs) > 8 else ""
        )
        raise UserError(
            f"Run folder {out} holds another run: its config or dataset differs in {shown}; "
            "nothing was changed. The same command continues a run; to continue this one as "
            f"it was, use 'lwr train --resume {out}'; else choose a new --out."
        )
    return "finished" if load_checkpoint(last).epoch >= cfg.epochs else "continue"


@dataclass
class Created:
    """What `prepare_run_dir` made, so a start that fails can take exactly that away."""

    out: Path
    top: Path | None  # the highest folder this command created (None: `out` existed)

    def remove(self) -> None:
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
            return
        for name in RUN_FILES:
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()

    def has_checkpoint(self) -> bool:
        return (self.out / "checkpoints" / "last.safetensors").is_file()


def prepare_run_dir(out: Path) -> Created:
    """Create OUT/checkpoints (clearing the files of an earlier start that saved nothing)."""
    out = Path(out)
    top = None
    probe = out
    while not probe.exists():
        top, probe = probe, probe.parent
    created = Created(out, top)
    if top is None:
        created.remove()  # a start that saved nothing: its files go, the folder stays
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    return created
