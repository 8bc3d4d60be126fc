"""Training progress: rich bars in a terminal, plain periodic lines otherwise (CI, log files).

Everything goes to stderr so that stdout stays clean for machine-readable output.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _fmt(info: dict[str, Any]) -> str:
    parts = []
    for key, value in info.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class TrainProgress:
    """Reports steps of each epoch. `interactive=None` picks rich bars only for a terminal."""

    def __init__(self, total_epochs: int, enabled: bool = True, interactive: bool | None = None):
        self.console = Console(stderr=True, markup=False)
        self.total_epochs = total_epochs
        self.enabled = enabled
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress: Progress | None = None
        self._task: Any = None
        self._t0 = time.perf_counter()
        # Set by a caller (a sweep) that received Ctrl-C before the Trainer's handler was up.
        self.stop_requested = False

    def start_epoch(self, epoch: int, steps: int) -> None:
        if not self.enabled:
            return
        self._t0 = time.perf_counter()
        if self.interactive:
            self._progress = Progress(
                TextColumn(f"epoch {epoch + 1}/{self.total_epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=steps, info="")

    def step(self, epoch: int, step: int, steps: int, info: dict[str, Any] | None) -> None:
        """Called every step; `info` (already synced values) only at log intervals."""
        if not self.enabled:
            return
        if self._progress is not None:
            kwargs: dict[str, Any] = {"completed": step + 1}
            if info:
                kwargs["info"] = _fmt(info)
            self._progress.update(self._task, **kwargs)
        elif info:
            self.console.print(
                f"epoch {epoch + 1}/{self.total_epochs} step {step + 1}/{steps}  {_fmt(info)}",
                highlight=False,
                soft_wrap=True,
            )

    def end_epoch(self, epoch: int, summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.console.print(
            f"epoch {epoch + 1}/{self.total_epochs}  {_fmt(summary)}",
            highlight=False,
            soft_wrap=True,
        )

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)
