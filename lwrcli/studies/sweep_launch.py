"""Running a planned sweep elsewhere: N local subprocesses, a shell plan, a SLURM job array.

Every route runs the same `lwr train` command per run into the same folder, so a sweep that
was started on a cluster can be finished (or reported) locally and the other way round.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lwrcli.errors import UserError
from lwrcli.runtime.files import fix_mode
from lwrcli.studies.sweep import PlannedRun, SweepSpec, check_or_write_record, sweep_record
from lwrcli.studies.sweep_run import _hms, clear_unstarted, epochs_done, run_state, saved_at
from lwrcli.train.engine import Interrupted
from lwrcli.train.progress import TrainProgress

# Set by plan.sh to its own path: a run stopped inside it names the script that continues.
PLAN_ENV = "LWR_SWEEP_PLAN"


def train_command(run: PlannedRun, run_dir: Path, resume: bool = False) -> list[str]:
    """The `lwr train` arguments of one run (without the program); paths absolute, so the
    command runs the same from any folder."""
    run_dir = Path(run_dir).resolve()
    if resume:
        return ["train", "--resume", str(run_dir)]
    args = ["train"]
    if run.preset:
        args += ["--preset", run.preset]
    else:
        args += ["--config", str(Path(str(run.config)).resolve())]
    args += ["--data", str(run.data), "--out", str(run_dir)]
    for item in run.overrides:
        args += ["--set", item]
    return args


def _visible_gpus() -> list[str]:
    """GPU ids for CUDA_VISIBLE_DEVICES: those already visible, else every device found."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_parallel(
    out: Path, spec: SweepSpec, runs: list[PlannedRun], parallel: int
) -> dict[str, int]:
    """N `python -m lwrcli train` subprocesses at a time, spread round-robin over the visible
    GPUs (several per GPU is fine; on CPU just N processes). Logs go to SWEEP_DIR/logs/.

    Children get their own session, so a terminal Ctrl-C reaches only this process, which
    forwards one SIGINT to each child (each then stops after its epoch) and raises Interrupted.
    """
    check_or_write_record(out, sweep_record(spec, runs))
    progress = TrainProgress(1)
    gpus = _visible_gpus()
    todo = [
        (k, r) for k, r in enumerate(runs, 1) if run_state(out / r.name, r.cfg.epochs) != "done"
    ]
    counts = {"skipped": len(runs) - len(todo), "trained": 0, "resumed": 0, "failed": 0}
    by_name = {r.name: r for r in runs}
    progress.message(
        f"Sweep of {len(runs)} runs in {out}: {counts['skipped']} finished already, "
        f"{len(todo)} to run, {parallel} at a time"
        + (f" over GPUs {','.join(gpus)}." if gpus else " on CPU.")
    )
    (out / "logs").mkdir(exist_ok=True)
    running: dict[int, tuple[subprocess.Popen[bytes], PlannedRun, int, float, Any]] = {}
    stop = {"flag": False}

    stopped: list[PlannedRun] = []  # the runs the stop reached while they ran

    def on_signal(signum: int, frame: Any) -> None:
        stop["flag"] = True
        for proc, run, *_ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                if run not in stopped:
                    stopped.append(run)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    durations: list[float] = []
    try:
        while todo or running:
            free = [s for s in range(parallel) if s not in running]
            while todo and free and not stop["flag"]:
                ready = next((i for i, (_, r) in enumerate(todo) if _ready(out, r, by_name)), None)
                if ready is None:  # every run left waits for its stage 1
                    break
                slot, (k, run) = free.pop(0), todo.pop(ready)
                running[slot] = _launch(out, run, k, len(runs), slot, gpus, progress)
            if todo and not running and not stop["flag"]:
                # Nothing runs and nothing can start: the stage-1 runs these need have failed.
                for k, run in todo:
                    progress.message(
                        f"run {k}/{len(runs)} {run.name}: not started, its stage 1 "
                        f"{run.after} did not finish"
                    )
                counts["failed"] += len(todo)
                todo = []
            for slot, (proc, run, k, t0, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[slot]
                ok = proc.returncode == 0
                durations.append(time.perf_counter() - t0)
                counts["trained" if ok else "failed"] += 1
                eta = sum(durations) / len(durations) * (len(todo) + len(running)) / parallel
                progress.message(
                    f"run {k}/{len(runs)} {run.name}: "
                    + ("done" if ok else f"stopped (exit {proc.returncode}, see logs/)")
                    + f"; {len(todo) + len(running)} left, sweep ETA {_hms(eta)}"
                )
            if stop["flag"] and not running:
                raise _stopped(out, runs, stopped)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return counts


def _stopped(out: Path, runs: list[PlannedRun], stopped: list[PlannedRun]) -> Interrupted:
    """The stop of a parallel sweep: where each run it reached was saved (epoch and step)."""
    saves = [f"{r.name} {saved_at(out / r.name, r.cfg.epochs)}" for r in stopped]
    done = sum(run_state(out / r.name, r.cfg.epochs) == "done" for r in runs)
    exc = Interrupted("the sweep")
    exc.sweep = (
        "Sweep stopped"
        + (f": {'; '.join(saves)}" if saves else "")
        + f"; {done} of {len(runs)} runs are finished."
    )
    return exc


def _ready(out: Path, run: PlannedRun, by_name: dict[str, PlannedRun]) -> bool:
    """A run can start once the run it starts from (`init_from`) has finished."""
    if run.after is None:
        return True
    return run_state(out / run.after, by_name[run.after].cfg.epochs) == "done"


def _launch(
    out: Path, run: PlannedRun, k: int, n: int, slot: int, gpus: list[str], progress: TrainProgress
) -> tuple[subprocess.Popen[bytes], PlannedRun, int, float, Any]:
    run_dir = out / run.name
    resume = run_state(run_dir, run.cfg.epochs) == "resume"
    if not resume:
        clear_unstarted(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    where = "CPU"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    log = open(out / "logs" / (run.name.replace("/", "__") + ".log"), "ab")
    cmd = [sys.executable, "-m", "lwrcli", *train_command(run, run_dir, resume)]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    verb = f"resuming after epoch {epochs_done(run_dir)}" if resume else "starting"
    progress.message(f"run {k}/{n} {run.name}: {verb} on {where}")
    return proc, run, k, time.perf_counter(), log


# Both scripts define this: a run whose metrics.jsonl ends with its last epoch is finished
# (the record is written after that epoch's checkpoint). A finish it cannot see (a stop
# between the two) `lwr train --resume` sees, and says so with exit status 0.
FINISHED = [
    "finished() {  # RUN_DIR EPOCHS: true (saying so) when the run has finished",
    r'  [ -f "$1/metrics.jsonl" ] && tail -n 1 "$1/metrics.jsonl" |',
    r'    grep -Eq "^\{\"epoch\": ?$2[,}]" && echo "$1 already finished all $2 epochs; skipped."',
    "}",
]


def _line(run: PlannedRun, out: Path, launcher: list[str], extra: tuple[str, ...] = ()) -> str:
    """One run: skipped when finished, resumed when it has a checkpoint, else started."""
    run_dir = out.resolve() / run.name
    fresh = shlex.join([*launcher, *train_command(run, run_dir), *extra])
    again = shlex.join([*launcher, *train_command(run, run_dir, resume=True), *extra])
    done = shlex.quote(str(run_dir / "checkpoints" / "last.safetensors"))
    skip = f"finished {shlex.quote(str(run_dir))} {run.cfg.epochs}"
    return f"if {skip}; then :; elif [ -f {done} ]; then {again}; else {fresh}; fi"


def _launcher(gpus_per_run: int) -> list[str]:
    if gpus_per_run > 1:
        return ["torchrun", "--standalone", "--nproc_per_node", str(gpus_per_run), "-m", "lwrcli"]
    return ["lwr"]


def write_plan(out: Path, spec: SweepSpec, runs: list[PlannedRun], gpus_per_run: int) -> Path:
    """SWEEP_DIR/plan.sh: the exact `lwr train` command of every run, one per line: a
    finished run is skipped (one line), one with a checkpoint resumed. Every path in it is
    absolute, so it runs the same from any folder and any number of times. Nothing is
    trained here."""
    check_or_write_record(out, sweep_record(spec, runs))
    root = out.resolve()
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(runs)} runs of the sweep in {root}: run it again to continue what is left.",
        "set -e",
        f"export {PLAN_ENV}={shlex.quote(str(root / 'plan.sh'))}",
        *FINISHED,
    ]
    for run in runs:
        lines += [f"# {run.name}", f"mkdir -p {shlex.quote(str((root / run.name).parent))}"]
        lines.append(_line(run, out, _launcher(gpus_per_run)))
    path = out / "plan.sh"
    path.write_text("\n".join(lines) + "\n")
    fix_mode(path, executable=True)  # 0777 minus the umask, like every file lwr writes
    return path


def write_slurm(out: Path, spec: SweepSpec, runs: list[PlannedRun], gpus_per_run: int) -> Path:
    """SWEEP_DIR/sweep.sbatch: one array task per run (`sbatch sweep.sbatch`); with more than
    one GPU per run the task starts torchrun. Add your partition/account lines at the top.

    Two minutes before the time limit SLURM sends SIGUSR1 to the batch shell
    (`--signal=B:USR1@120`), which passes it on to the run (to torchrun as SIGTERM, which
    torchrun forwards to its workers): the run saves and requeues its task (`--requeue`), and
    the requeued task continues it."""
    chained = [r.name for r in runs if r.after is not None]
    if chained:
        raise UserError(
            f"{len(chained)} runs of this sweep start from another run's checkpoint (init_from, "
            f"e.g. {chained[0]}), but a SLURM array starts its tasks in any order. Run the "
            "stages as two sweeps (submit the second after the first), or use --plan, whose "
            "plan.sh runs them in order."
        )
    check_or_write_record(out, sweep_record(spec, runs))
    # The shell runs the command in the background: a foreground child would delay the trap
    # until the child ended, i.e. until the time limit had killed it.
    forward = "TERM" if gpus_per_run > 1 else "USR1"
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name=lwr-sweep-{out.name}",
        f"#SBATCH --array=0-{len(runs) - 1}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --gres=gpu:{gpus_per_run}",
        f"#SBATCH --cpus-per-task={4 * gpus_per_run}",
        f"#SBATCH --output={out.resolve()}/logs/slurm-%A_%a.log",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(str(out.resolve() / 'logs'))}",
        'forward() {  # run "$@" in the background; pass SLURM\'s warning on to it',
        '  "$@" &',
        "  child=$!",
        f"  trap 'kill -{forward} $child 2>/dev/null || true' USR1",
        "  while true; do",
        '    set +e; wait "$child"; status=$?; set -e',
        '    kill -0 "$child" 2>/dev/null || return "$status"',
        "  done",
        "}",
        *FINISHED,
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for i, run in enumerate(runs):
        lines.append(f"  {i})  # {run.name}")
        lines.append(f"    mkdir -p {shlex.quote(str((out.resolve() / run.name).parent))}")
        line = _line(run, out, ["forward", *_launcher(gpus_per_run)], ("--requeue",))
        lines.append(f"    {line} ;;")
    lines.append("esac")
    path = out / "sweep.sbatch"
    path.write_text("\n".join(lines) + "\n")
    return path
