"""The Trainer's checkpoint writing (`lwrcli.train.engine`): what each save holds, and the order
of a save's files that keeps a matching weights/state pair on disk whatever instant a kill comes.

A save copies what it writes at the save point (weights, optimizer buffers, RNG and loader
state, the epoch's sums: `resume_snapshot`) and writes the copies on a writer thread while the
next steps train (`lwrcli.runtime.background`): the files are the same bytes a synchronous save
would write, still temp-then-rename. One save at a time: the next save, and the end of `fit`
(finished, stopped or failed), first wait for the one in flight and raise its error if it
failed. Metrics lines follow their checkpoint on the same thread, so the order on disk holds.

A mixin of `Trainer`: it reads the trainer's run state, components and folders.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from lwrcli.checkpoint.files import THETA_REFERENCE, atomic_save, checkpoint_payload
from lwrcli.checkpoint.resume import resume_snapshot, write_resume_point
from lwrcli.hooks import hook_point
from lwrcli.models import classifier_key, classifier_keys
from lwrcli.runtime.background import BackgroundWriter
from lwrcli.runtime.distributed import all_reduce_sum, barrier
from lwrcli.train.runlog import METRICS, append_metrics


class CheckpointWriter:
    """End-of-epoch and mid-epoch saves of a `Trainer` (its attributes are used as they are)."""

    parts: Any
    cfg: Any
    data: Any
    state: Any
    dist: Any
    run_dir: Any
    optimizer: Any
    live: Any
    select_split: str | None
    _saving: bool
    _abort_after_save: bool
    _last_save: float
    _initial_record: dict[str, Any] | None  # Trainer's epoch-0 record, until the first save
    _writer: BackgroundWriter | None = None  # the checkpoint writer thread, from the first save
    timer: Any  # Trainer's phase timer (lwrcli.runtime.timing): a no-op unless asked for

    # --- checkpoints -----------------------------------------------------------------------
    def _weights(self, record: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return checkpoint_payload(
            self.parts.raw_model,
            self.cfg,
            self.data.class_counts,
            self.data.manifest.class_names,
            self.state.epoch,
            record,
            classifier_key(self.parts.raw_model),
            extra={
                "selected_on": self.select_split or "none",
                "dataset_fingerprint": self.data.manifest.fingerprint,
                # What the model was fed, so `lwr predict` prepares new images the same way
                # without the prepared dataset (lwrcli.use.predict.input_spec).
                "dataset_storage": self.data.manifest.storage,
                "dataset_image_size": str(self.data.manifest.image_size or ""),
                "step": str(self.state.step),
                **_heads_meta(self.parts.raw_model),
            },
            extra_tensors={
                **self.parts.run_tensors,
                **{k: v for tensors in self.parts.checkpoint_tensors for k, v in tensors().items()},
                **(
                    {THETA_REFERENCE: self.parts.theta_reference}
                    if self.parts.theta_reference is not None
                    else {}
                ),
            },
        )

    @contextlib.contextmanager
    def _saving_guard(self) -> Iterator[None]:
        """A second Ctrl-C during a save waits for the save to finish whole."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
            self._last_save = time.monotonic()
        if self._abort_after_save:
            raise KeyboardInterrupt

    def _save(self, record: dict[str, Any]) -> None:
        """End of an epoch: `best`/`epoch_N` copies, the `last` pair, then the metrics line
        (resume restores that line from the checkpoint if a kill comes in between), written
        in the background from copies taken now (`_write_behind`)."""
        if self.run_dir is None or not self.dist.is_main:
            return
        ckpt_dir, metrics = self.run_dir / "checkpoints", self.run_dir / METRICS
        names = []
        if self.cfg.save_every and self.state.epoch % self.cfg.save_every == 0:
            names.append(f"epoch_{self.state.epoch}")
        if record.get("best"):
            names.append("best")
        with self._saving_guard(), self.timer("checkpoint"):
            weights = self._weights(record)
            point = resume_snapshot(weights, self.optimizer, self.data.train, self.state)
            lines = [*self._take_initial_record(), dict(record)]

            def write() -> None:
                for name in names:
                    atomic_save(point.weights, ckpt_dir / f"{name}.safetensors", weights[1])
                write_resume_point(ckpt_dir, point)
                for line in lines:
                    append_metrics(metrics, line)
                hook_point("saved")  # tests kill here: this save is on disk, the next not yet

            self._write_behind(write)
        with self.timer("logging"):  # outside the guard: a slow tracker never holds a Ctrl-C
            for line in lines:
                self.live.log(line)

    def _save_mid_epoch(self, epoch: int, step: int, sums: torch.Tensor) -> None:
        """Inside an epoch: the `last` pair with the loader's position and the sums so far."""
        sums = all_reduce_sum(sums, self.dist)
        if self.run_dir is not None and self.dist.is_main:
            ckpt_dir, metrics = self.run_dir / "checkpoints", self.run_dir / METRICS
            self.state.step = step
            record = {"epoch": epoch + 1, "step": step, "mid_epoch": True}
            with self._saving_guard(), self.timer("checkpoint"):
                point = resume_snapshot(
                    self._weights(record), self.optimizer, self.data.train, self.state, sums
                )
                lines = self._take_initial_record()

                def write() -> None:
                    write_resume_point(ckpt_dir, point)
                    for line in lines:
                        append_metrics(metrics, line)
                    hook_point("saved")

                self._write_behind(write)
            for line in lines:
                self.live.log(line)
            self.state.step = 0
        barrier(self.dist)
        self._last_save = time.monotonic()

    def _take_initial_record(self) -> list[dict[str, Any]]:
        """The `epoch: 0` record, once: it reaches metrics.jsonl with the first save."""
        record, self._initial_record = self._initial_record, None
        return [record] if record is not None else []

    # --- writing in the background ---------------------------------------------------------
    def _write_behind(self, write: Callable[[], None]) -> None:
        """Start `write` on the writer thread once the previous save is on disk (its error,
        if it failed, is raised here). Training goes on meanwhile; `finish_writes` waits."""
        if self._writer is None:
            self._writer = BackgroundWriter("lwr-checkpoint-writer")
        self._writer.submit(write)

    def finish_writes(self) -> None:
        """Wait until the last save is on disk and raise its error if it failed: at the end
        of `fit`, whether it finished, stopped or failed. A second Ctrl-C waits for it too."""
        if self._writer is not None:
            with self._saving_guard():
                self._writer.join()


def _heads_meta(model: Any) -> dict[str, str]:
    """`classifier_keys` of a model with several classifier heads (experts), for analysis and
    evaluation; nothing for one head."""
    keys = classifier_keys(model)
    return {"classifier_keys": json.dumps(keys)} if len(keys) > 1 else {}
