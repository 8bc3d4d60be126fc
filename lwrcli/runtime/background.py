"""One write at a time, off the caller's thread: how a run writes its checkpoints while the
next steps train (as torch.distributed.checkpoint's async save does).

The caller hands over a job that only writes copies it took (`lwrcli.checkpoint.resume.
resume_snapshot`); `submit` first waits for the job before it, so at most one write is in
flight and writes land in the order they were asked for; `join` waits for the last one. A job's
error is raised by the next `submit` or `join`, in the caller's thread: a failed write stops
the run as it did when saves were synchronous. The thread is not a daemon, so the interpreter
finishes a write in flight before it exits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundWriter:
    """Runs submitted jobs one at a time on a writer thread, in order."""

    def __init__(self, name: str = "lwr-writer") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # handed to the caller's thread by join()
            self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        """Wait for the job before (raising its error), then start `job` on the writer thread."""
        self.join()
        self._thread = threading.Thread(target=self._run, args=(job,), name=self.name)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A job is being written now."""
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        """Wait until the last job is written; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()  # interrupted (Ctrl-C): still pending, joined again later
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
