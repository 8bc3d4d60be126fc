"""Running a planned sweep in this process: each run's state (done, to continue, not
started), the sweep's progress line, and a Ctrl-C that stops after the current run's save.
The plan itself (entries x grid x seeds, names, the record) is lwrcli.studies.sweep's."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from lwrcli.errors import UserError
from lwrcli.runtime.runname import SWEEP_FILE
from lwrcli.studies.sweep import PlannedRun, SweepSpec, check_or_write_record, sweep_record
from lwrcli.train.progress import TrainProgress


def epochs_done(run_dir: Path) -> int:
    """Complete epochs recorded in metrics.jsonl (0 when there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return int(json.loads(lines[-1])["epoch"]) if lines else 0


def run_state(run_dir: Path, epochs: int) -> str:
    """'done', 'resume' (has a checkpoint), or 'new' (absent, or stopped before epoch 1)."""
    if epochs_done(run_dir) >= epochs:
        return "done"
    if (run_dir / "checkpoints" / "last.safetensors").is_file():
        from lwrcli.checkpoint.files import load_checkpoint

        # metrics.jsonl is written after the checkpoint: a stop in between is still done.
        if load_checkpoint(run_dir / "checkpoints" / "last.safetensors").epoch >= epochs:
            return "done"
        return "resume"
    return "new"


def saved_at(run_dir: Path, epochs: int) -> str:
    """Where a run's last save stands: 'finished', 'saved in epoch 3 after step 40',
    'saved after epoch 2', or 'nothing saved yet'."""
    last = run_dir / "checkpoints" / "last.safetensors"
    if epochs_done(run_dir) >= epochs:
        return "finished"
    if not last.is_file():
        return "nothing saved yet"
    from lwrcli.checkpoint.files import load_checkpoint

    ckpt = load_checkpoint(last)
    if ckpt.epoch >= epochs:
        return "finished"
    if ckpt.step:
        return f"saved in epoch {ckpt.epoch + 1} after step {ckpt.step}"
    return f"saved after epoch {ckpt.epoch}"


def clear_unstarted(run_dir: Path) -> None:
    """A folder the sweep made but whose run stopped before its first checkpoint holds no
    result; clear it so `lwr train` can start there."""
    if run_dir.exists() and not (run_dir / "checkpoints" / "last.safetensors").exists():
        shutil.rmtree(run_dir)


# ---------------------------------------------------------------------------------------------
# Progress and sequential execution


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class SweepProgress(TrainProgress):
    """A run's epoch lines, prefixed with 'run k/n' and followed by the sweep's overall ETA
    (seconds per epoch measured in this session x epochs still to train)."""

    def __init__(self, epochs_left: int, n: int) -> None:
        super().__init__(1)
        self.epochs_left, self.n = epochs_left, n
        self.k, self.run_name = 0, ""
        self.t_start, self.epochs_trained = time.perf_counter(), 0

    def begin(self, k: int, name: str, epochs: int) -> None:
        self.k, self.run_name, self.total_epochs = k, name, epochs

    def end_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        self.epochs_trained += 1
        self.epochs_left -= 1
        rate = (time.perf_counter() - self.t_start) / self.epochs_trained
        summary = {**summary, "sweep ETA": _hms(rate * max(self.epochs_left, 0))}
        self.console.print(f"run {self.k}/{self.n} {self.run_name}", end="  ", highlight=False)
        super().end_epoch(epoch, summary)


def run_sweep(out: Path, spec: SweepSpec, runs: list[PlannedRun]) -> dict[str, int]:
    """Execute the planned runs one after another in this process; returns counts by outcome.
    `Interrupted` (Ctrl-C) propagates after the current epoch's checkpoint, like `lwr train`."""
    from lwrcli.train.engine import Interrupted
    from lwrcli.train.run import train_run

    # What this command creates, so a first run that fails to start can take it away again.
    fresh_folder = None if (out / SWEEP_FILE).is_file() else out.exists()
    check_or_write_record(out, sweep_record(spec, runs))
    states = [run_state(out / r.name, r.cfg.epochs) for r in runs]
    left = sum(
        r.cfg.epochs - epochs_done(out / r.name) for r, s in zip(runs, states) if s != "done"
    )
    progress = SweepProgress(left, len(runs))
    counts = {"skipped": states.count("done"), "trained": 0, "resumed": 0}
    progress.message(
        f"Sweep of {len(runs)} runs in {out}: {counts['skipped']} finished already, "
        f"{states.count('resume')} to resume, {states.count('new')} to start."
    )
    # Ctrl-C at any instant stops the sweep once the current run has saved: between runs (and
    # while a run sets up) it only sets a flag; inside a run's loop the Trainer's own handler
    # saves where the run stands, and a stop that reached it after the run's last step comes
    # back through `progress.stop_requested`, checked before every run.
    stop: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        stop.append(signum)
        progress.stop_requested = True  # a run still setting up stops after its first step

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def finished() -> str:
        n = counts["skipped"] + counts["trained"] + counts["resumed"]
        return f"{n} of {len(runs)} runs are finished"

    try:
        for k, (run, state) in enumerate(zip(runs, states), start=1):
            if state == "done":
                continue
            if stop or progress.stop_requested:
                exc = Interrupted(f"the sweep before run {k}/{len(runs)}")
                exc.sweep = f"Sweep stopped before run {k}/{len(runs)} {run.name}; {finished()}."
                raise exc
            run_dir = out / run.name
            progress.begin(k, run.name, run.cfg.epochs)
            try:
                if state == "resume":
                    progress.message(f"run {k}/{len(runs)} {run.name}: resuming")
                    train_run(None, run.data, resume=run_dir, progress=progress)  # type: ignore[arg-type]
                    counts["resumed"] += 1
                else:
                    progress.message(f"run {k}/{len(runs)} {run.name}: starting")
                    clear_unstarted(run_dir)
                    try:
                        train_run(run.cfg, run.data, run_dir, progress=progress)
                    except UserError:
                        _remove_unstarted(out, run_dir, fresh_folder)
                        raise
                    counts["trained"] += 1
            except Interrupted as exc:  # say which run, and where its save is
                exc.sweep = (
                    f"Sweep stopped in run {k}/{len(runs)} {run.name}, {exc.where}; "
                    f"that run was saved there, and {finished()}."
                )
                raise
        if stop or progress.stop_requested:  # the last run had finished when the stop came
            exc = Interrupted("the sweep after its last run")
            exc.sweep = (
                f"The stop came too late to matter: it arrived after the sweep's last run, and "
                f"all {len(runs)} runs are finished."
            )
            exc.late = True
            raise exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return counts


def _remove_unstarted(out: Path, run_dir: Path, fresh_folder: bool | None) -> None:
    """A run that failed to start (train_run removed its own folder): remove the empty
    folders above it and, when this command created the sweep folder and no run of it holds
    anything yet, the sweep record (and the folder, if it made that) too, so the corrected
    command can start there."""
    clear_unstarted(run_dir)
    parent = run_dir.parent
    while parent != out and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    if fresh_folder is not None and {p.name for p in out.iterdir()} <= {SWEEP_FILE}:
        (out / SWEEP_FILE).unlink(missing_ok=True)
        if not fresh_folder:  # the folder did not exist before this command
            out.rmdir()
