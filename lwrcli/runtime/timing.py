"""Where a training epoch's wall time goes: phase timers inside the loop, off by default.

`LWR_PHASE_TIMES=1 lwr train ...` splits each epoch's wall time into the phases the engine
marks (`steps`, `data`, `geometry`, `eval`, `checkpoint`, `logging`) and `other` (the rest:
per-step bookkeeping, hooks, what no phase covers), prints one line per epoch and keeps the
records in `RECORDS` for a caller in the same process (`benchmarks/bench_run.py`); set to a
file path instead of 1, it also appends each record to that file as a JSON line. Off, the
engine's hooks cost one attribute lookup and a shared no-op context per call: `phase_timer`
returns `OFF`, whose context is a constant and whose `wrap` hands the iterator back as is.

On CUDA a phase ends with a device synchronisation, so its time is the work's, not the
launch's (the timers change the timing they measure there; on CPU they do not).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

ENV = "LWR_PHASE_TIMES"
PHASES = ("steps", "data", "geometry", "eval", "checkpoint", "logging")
# Every epoch record a timer on completed, in this process (oldest first).
RECORDS: list[dict[str, Any]] = []

T = TypeVar("T")
_NULL = contextlib.nullcontext()


class Off:
    """The timer when the flag is off: every hook is a no-op."""

    enabled = False

    def __call__(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return _NULL

    def wrap(self, batches: Iterator[T], name: str = "data") -> Iterator[T]:
        return batches

    def start_epoch(self) -> None:
        pass

    def end_epoch(self, epoch: int, images: float) -> None:
        pass


OFF = Off()


class PhaseTimer(Off):
    """Seconds per phase within each epoch, from `start_epoch` to `end_epoch`."""

    enabled = True

    def __init__(
        self,
        device: torch.device,
        report: Callable[[str], None] | None = None,
        path: str | None = None,
    ) -> None:
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        self.report = report
        self.path = path  # JSON lines, appended (a benchmark reading another process's run)
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._t0: float | None = None

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def __call__(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return self._timed(name)

    def wrap(self, batches: Iterator[T], name: str = "data") -> Iterator[T]:
        """The iterator, with the time each `next` takes counted as `name`."""
        while True:
            with self._timed(name):
                try:
                    item = next(batches)
                except StopIteration:
                    return
            yield item

    def start_epoch(self) -> None:
        if self.sync is not None:
            self.sync()
        self.totals = dict.fromkeys(PHASES, 0.0)
        self._t0 = time.perf_counter()

    def end_epoch(self, epoch: int, images: float) -> None:
        """Close epoch `epoch` (1-based) of `images` training images: record and report it."""
        if self._t0 is None:
            return
        wall = time.perf_counter() - self._t0
        self._t0 = None
        phases = {k: round(v, 4) for k, v in self.totals.items()}
        phases["other"] = round(max(wall - sum(self.totals.values()), 0.0), 4)
        record = {"epoch": epoch, "wall_s": round(wall, 4), "images": images, "phases": phases}
        RECORDS.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.report is not None:
            shares = ", ".join(
                f"{k} {v:.2f} s ({100 * v / max(wall, 1e-9):.0f}%)"
                for k, v in phases.items()
                if v > 0
            )
            self.report(f"epoch {epoch} phases ({wall:.2f} s): {shares}")


def phase_timer(device: torch.device, report: Callable[[str], None] | None = None) -> Off:
    """`OFF` unless LWR_PHASE_TIMES is set: '1' times and reports each epoch, any other value
    (a file path) also appends the records to that file."""
    value = os.environ.get(ENV, "")
    if value in ("", "0"):
        return OFF
    return PhaseTimer(device, report, None if value == "1" else value)
