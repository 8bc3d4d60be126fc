"""Named points where a test can hold or kill a training process in a known state.

Signal and restart tests must synchronise on events, never on timing: a test sets one of the
variables below, waits for the file the process writes, then acts (sends SIGINT, ...). Both
are no-ops unless the variable is set. The lowest room: imports nothing from lwrcli.

- `LWR_TEST_PAUSE=POINT[#N]:FILE`: the N-th arrival (default the first) at POINT in this
  process writes FILE and waits until the caller's condition holds (its signal handler ran),
  for at most PAUSE_LIMIT_S seconds.
- `LWR_TEST_KILL=POINT[#N]`: the N-th arrival at POINT kills this process with SIGKILL (a
  node failure), on the first attempt of a torchrun only (TORCHELASTIC_RESTART_COUNT 0).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PAUSE_ENV = "LWR_TEST_PAUSE"
KILL_ENV = "LWR_TEST_KILL"
PAUSE_LIMIT_S = 120.0
_arrivals: Counter[str] = Counter()


def _target(spec: str) -> tuple[str, int]:
    point, _, nth = spec.partition("#")
    return point, int(nth or 1)


def hook_point(point: str, until: Callable[[], bool] = lambda: True) -> None:
    """Arrive at `point`: pause or die there when a test asked for it."""
    pause, kill = os.environ.get(PAUSE_ENV), os.environ.get(KILL_ENV)
    if not pause and not kill:
        return
    _arrivals[point] += 1
    if kill and _target(kill) == (point, _arrivals[point]):
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
    if pause:
        spec, _, path = pause.partition(":")
        if _target(spec) == (point, _arrivals[point]):
            Path(path).write_text(f"{os.getpid()}\n")
            deadline = time.monotonic() + PAUSE_LIMIT_S
            # Signal handlers run between these short waits (PEP 475 resumes the sleep).
            while not until() and time.monotonic() < deadline:
                time.sleep(0.01)
