"""SLURM: put the job back in the queue after the run saved on the scheduler's warning.

`#SBATCH --signal=B:USR1@120` (written by `lwr sweep --slurm`) sends SIGUSR1 two minutes
before the time limit; the run saves where it stands and, with `lwr train --requeue`, asks
SLURM to run the same job again (`scontrol requeue $SLURM_JOB_ID`), which then continues the
run folder (lwrcli.train.rundir).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable


def requeue_job(log: Callable[[str], None]) -> bool:
    """`scontrol requeue $SLURM_JOB_ID`; says what happened on `log`. True when requeued."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        log("--requeue: not inside a SLURM job (no SLURM_JOB_ID); nothing was requeued.")
        return False
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"--requeue: scontrol could not run ({exc}); requeue job {job} by hand.")
        return False
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        log(f"--requeue: scontrol requeue {job} failed ({why[0] if why else done.returncode}).")
        return False
    log(f"Requeued SLURM job {job}: the same command will continue this run.")
    return True
