"""`lwr train`: set up a run folder, data, model and trainer; resume; tear down.

Layering (litgpt's setup -> main -> fit): `train_run` resolves the device and the process
group, prepares the run folder, builds the pieces, and hands them to `Trainer.fit`.
"""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lwrcli import __version__
from lwrcli.checkpoint.files import Checkpoint
from lwrcli.checkpoint.resume import load_train_state, resume_point
from lwrcli.config import TrainConfig, config_to_yaml, read_yaml, validate_config
from lwrcli.data.loading import build_data, check_dataset_matches
from lwrcli.data.manifest import read_manifest
from lwrcli.errors import UserError
from lwrcli.models import count_parameters
from lwrcli.runtime.device import bf16_warning, resolve_device
from lwrcli.runtime.distributed import DistInfo, barrier, launched, setup, teardown
from lwrcli.runtime.slurm import requeue_job
from lwrcli.train.build import build_components, train_loader_hook
from lwrcli.train.engine import Interrupted, Trainer
from lwrcli.train.init_weights import check_start
from lwrcli.train.live_log import LiveLog
from lwrcli.train.progress import TrainProgress
from lwrcli.train.resolve import resolve_config, speed_summary
from lwrcli.train.rundir import (
    RUN_INFO,
    SPEED_KEYS,
    Created,
    inspect_run_dir,
    prepare_run_dir,
    read_run_info,
)
from lwrcli.train.runlog import METRICS, read_metrics, reconcile_metrics


def environment_record(device: torch.device) -> dict[str, Any]:
    record: dict[str, Any] = {
        "lwr": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    try:
        import torchvision

        record["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if commit.returncode == 0:
            record["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return record


@dataclass
class RunResult:
    run_dir: Path
    epochs: int
    history: list[dict[str, Any]]
    best_epoch: int | None
    is_main: bool = True  # rank 0 (the one process that reports)
    # A stop (Ctrl-C, SIGTERM) that came after the last step: the run is complete anyway.
    stopped_late: bool = False
    # The run had finished before this call: nothing was trained; `history` is its
    # metrics.jsonl (what the CLI reports).
    finished_before: bool = False


def train_run(
    cfg: TrainConfig,
    data_dir: Path | None,
    out: Path | None = None,
    resume: Path | None = None,
    progress: TrainProgress | None = None,
    requeue: bool = False,
) -> RunResult:
    """Train from scratch into `out` (or continue it when it holds this same run), or
    continue the run in `resume` from its last save.

    Everything that can fail at start-up (data, model, pretrained weights, optimizer) is built
    before the run folder is created; a folder this call created and that holds no checkpoint
    when the call ends is removed again. `requeue`: after a stop by the scheduler's signal
    (SIGUSR1/SIGTERM) the SLURM job is requeued (lwrcli.runtime.slurm)."""
    continuing = False
    if resume is not None:
        cfg, data_dir, resume_ckpt, resume_state = _load_resume(resume, data_dir)
        run_dir = resume
        if resume_ckpt.epoch >= cfg.epochs:  # nothing left: say so, exit 0 (a re-run script)
            return _finished_result(run_dir, cfg.epochs, launched().is_main)
    else:
        if data_dir is None or out is None:
            raise UserError("lwr train needs --data DATA_DIR and --out RUN_DIR (or --resume).")
        run_dir = out
        resume_ckpt = None
    dist_kind = "cpu" if cfg.device == "cpu" or not torch.cuda.is_available() else "cuda"
    dist = setup(dist_kind, cfg.dist_timeout_minutes)
    if not dist.is_main:  # everything a user reads comes once, from rank 0
        warnings.filterwarnings("ignore")
    created: Created | None = None
    try:
        device = resolve_device(cfg.device, dist.local_rank)
        manifest = read_manifest(data_dir)
        check_dataset_matches(cfg, manifest, data_dir)  # before any loader
        resolved = resolve_config(
            cfg, device, manifest.storage, manifest.num_classes, manifest.image_size
        )
        auto = tuple(k for k in SPEED_KEYS if getattr(cfg, k) == "auto")
        cfg, requested = resolved.cfg, resolved.requested
        if resume is None:
            # Every process looks before rank 0 writes anything (the barrier below).
            found = inspect_run_dir(run_dir, cfg, manifest.fingerprint, auto)
            if found == "finished":
                return _finished_result(run_dir, cfg.epochs, dist.is_main)
            if found == "continue":
                saved, data_dir, resume_ckpt, resume_state = _load_resume(run_dir, data_dir)
                cfg = cfg.model_copy(update={k: getattr(saved, k) for k in auto})
                continuing = True
            else:  # before the run folder exists
                check_start(cfg, manifest)
        barrier(dist)
        torch.manual_seed(cfg.seed)
        wrap = train_loader_hook(cfg, manifest.num_classes)
        data = build_data(data_dir, cfg, device, dist, train_wrap=wrap)
        parts = build_components(cfg, data, device, dist, resume_ckpt)
        progress = progress or TrainProgress(cfg.epochs, enabled=dist.is_main)
        trainer = Trainer(cfg, parts, device, run_dir, dist, progress)
        warning = bf16_warning(device, cfg.amp)
        if warning:
            progress.message(warning)
        if resume_ckpt is not None:
            trainer.state, sums = load_train_state(
                resume_state, parts.optimizer, data.train, device
            )
            # Rank 0 saved the sums over all processes; the others start from zero.
            trainer.resumed_sums = sums if dist.is_main else None
            if dist.is_main:
                end_of_epoch = resume_ckpt.metrics if resume_ckpt.step == 0 else None
                reconcile_metrics(run_dir / METRICS, trainer.state.epoch, end_of_epoch)
            if continuing:
                progress.message(
                    f"continuing {run_dir} from epoch {trainer.state.epoch + 1}, step "
                    f"{trainer.state.step} (same config and dataset as its saved run)."
                )
            else:
                where = f"after epoch {trainer.state.epoch}"
                if trainer.state.step:
                    where = f"in epoch {trainer.state.epoch + 1} after step {trainer.state.step}"
                progress.message(f"Resuming {run_dir} {where}.")
        elif dist.is_main:
            created = prepare_run_dir(run_dir)
            _write_run_files(run_dir, cfg, data_dir, data.manifest.fingerprint, device, requested)
            line = _start_line(cfg, data, parts, trainer, dist, device, requested)
            progress.message(line + (f" {resolved.amp_why}." if resolved.amp_why else ""))
            for note in resolved.notes:
                progress.message(note)
            if trainer.select_split == data.manifest.test_split:
                progress.message(
                    "Note: selecting the best checkpoint on the TEST split, as configured "
                    "(data.select_on=test); its test accuracy is optimistic."
                )
        trainer.live = LiveLog.start(
            cfg,
            run_dir,
            data.manifest.fingerprint,
            is_main=dist.is_main,
            resume_epoch=trainer.state.epoch if resume_ckpt is not None else None,
            warn=progress.message,
        )
        barrier(dist)
        status = "KILLED"  # a second Ctrl-C (KeyboardInterrupt) unless set below
        try:
            state = trainer.fit()
            status = "FINISHED"
        except Interrupted:
            if requeue and dist.is_main and trainer.stop_signal != signal.SIGINT:
                requeue_job(progress.message)
            raise
        except Exception as exc:
            status = "FAILED"
            exc.lwr_rank = dist.rank  # type: ignore[attr-defined]  # raised inside the loop
            raise
        finally:
            trainer.live.close(status)
        # Leave together: a process tearing down its group while rank 0 still writes the last
        # checkpoint can abort in gloo's shutdown.
        barrier(dist)
        return RunResult(
            run_dir,
            state.epoch,
            trainer.history,
            state.best_epoch,
            dist.is_main,
            trainer.stopped_late,
        )
    except BaseException:
        if created is not None and not created.has_checkpoint():
            created.remove()  # a start that saved nothing leaves nothing behind
        raise
    finally:
        teardown()


def _finished_result(run_dir: Path, epochs: int, is_main: bool) -> RunResult:
    """A run that had finished before this call: its recorded epochs, nothing trained."""
    history = [r for r in read_metrics(Path(run_dir) / METRICS) if int(r["epoch"]) > 0]
    return RunResult(run_dir, epochs, history, None, is_main, finished_before=True)


def human_count(n: int) -> str:
    """A count at three significant digits: '950', '20.5 k', '88 M', '1.2 B'."""
    value = float(n)
    for unit in ("", " k", " M", " B"):
        if f"{value:.3g}" != "1e+03" and abs(value) < 999.5:
            return f"{value:.3g}{unit}" if unit else str(int(value))
        value /= 1000.0
    return f"{value:.3g} T"


def _parameters_note(model: torch.nn.Module) -> str:
    """'trainable 20.5 k of 88 M parameters' (a frozen base) or '11,220,132 parameters'."""
    total, trainable = count_parameters(model), count_parameters(model, trainable=True)
    if trainable == total:
        return f"{total:,} parameters"
    return f"trainable {human_count(trainable)} of {human_count(total)} parameters"


def _start_line(
    cfg: TrainConfig,
    data: Any,
    parts: Any,
    trainer: Trainer,
    dist: DistInfo,
    device: torch.device,
    requested: str,
) -> str:
    return (
        f"Training '{cfg.name}'"
        + (f" ({cfg.description})" if cfg.description else "")
        + f" on {data.manifest.name} ({data.num_classes} classes) "
        f"with {cfg.model.name} ({_parameters_note(parts.raw_model)}) on "
        f"{device}; "
        + _batch_note(cfg, dist)
        + f", lr {parts.base_lr:g}"
        + f"; model selection on: {trainer.select_split or 'none (last epoch)'}; "
        + speed_summary(cfg)
        + (f" (asked: {requested})" if requested != speed_summary(cfg) else "")
        + "."
    )


def _batch_note(cfg: TrainConfig, dist: DistInfo) -> str:
    if not dist.enabled and cfg.accum_steps == 1:
        return f"batch {cfg.batch_size}"
    per = cfg.batch_size // dist.world_size
    accum = f" in {cfg.accum_steps} micro-batches" if cfg.accum_steps > 1 else ""
    return (
        f"world size {dist.world_size}, batch {per} per process{accum}, "
        f"global batch {cfg.batch_size}"
    )


def _write_run_files(
    run_dir: Path,
    cfg: TrainConfig,
    data_dir: Path,
    fingerprint: str,
    device: torch.device,
    requested: str = "",
) -> None:
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    info = {
        "data_dir": str(Path(data_dir).resolve()),
        "dataset_fingerprint": fingerprint,
        # The speed settings as resolved for this device (auto made concrete) and as asked.
        "speed": {
            **{k: getattr(cfg, k) for k in ("amp", "channels_last", "compile", "compile_mode")},
            "requested": requested,
        },
    }
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    (run_dir / "environment.json").write_text(json.dumps(environment_record(device), indent=2))


def _load_resume(
    run_dir: Path, data_dir: Path | None
) -> tuple[TrainConfig, Path, Checkpoint, Path]:
    """The run's config, dataset, the weights of its last save and that save's state file."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    ckpt_path = run_dir / "checkpoints" / "last.safetensors"
    if not cfg_path.is_file() or not ckpt_path.is_file():
        raise UserError(
            f"Cannot resume {run_dir}: it has no config.yaml or checkpoints/last.safetensors "
            "(a run saves its first checkpoint at the end of epoch 1, or earlier with "
            "checkpoint_every_steps / checkpoint_every_minutes)."
        )
    cfg = validate_config(read_yaml(cfg_path), str(cfg_path))
    info = read_run_info(run_dir / RUN_INFO)
    data_dir = Path(data_dir or info.get("data_dir", ""))
    ckpt, state = resume_point(run_dir / "checkpoints")
    if ckpt.epoch >= cfg.epochs:  # finished: the caller says so (its dataset may be gone)
        return cfg, data_dir, ckpt, state
    fp = info.get("dataset_fingerprint")
    if fp and read_manifest(data_dir).fingerprint != fp:
        raise UserError(
            f"Dataset {data_dir} differs from the one run {run_dir} was trained on "
            "(fingerprint mismatch); resume with the same prepared dataset."
        )
    return cfg, data_dir, ckpt, state
