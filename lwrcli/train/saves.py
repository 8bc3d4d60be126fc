"""The Trainer's checkpoint writing (`lwrcli.train.engine`): what each save holds, and the order
of a save's files that keeps a matching weights/state pair on disk whatever instant a kill comes.

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
from lwrcli.checkpoint.resume import commit_resume_point
from lwrcli.models import classifier_key, classifier_keys
from lwrcli.runtime.distributed import all_reduce_sum, barrier
from lwrcli.train.runlog import append_metrics


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
    _flush_initial_record: Callable[[], None]  # Trainer's: the epoch-0 record, once

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
        (resume restores that line from the checkpoint if a kill comes in between)."""
        if self.run_dir is None or not self.dist.is_main:
            return
        ckpt_dir = self.run_dir / "checkpoints"
        names = []
        if self.cfg.save_every and self.state.epoch % self.cfg.save_every == 0:
            names.append(f"epoch_{self.state.epoch}")
        if record.get("best"):
            names.append("best")
        with self._saving_guard():
            weights = self._weights(record)
            for name in names:
                atomic_save(weights[0], ckpt_dir / f"{name}.safetensors", weights[1])
            commit_resume_point(ckpt_dir, weights, self.optimizer, self.data.train, self.state)
            self._flush_initial_record()
            append_metrics(self.run_dir / "metrics.jsonl", record)
        self.live.log(record)  # after the save: a slow tracker never holds a second Ctrl-C

    def _save_mid_epoch(self, epoch: int, step: int, sums: torch.Tensor) -> None:
        """Inside an epoch: the `last` pair with the loader's position and the sums so far."""
        sums = all_reduce_sum(sums, self.dist)
        if self.run_dir is not None and self.dist.is_main:
            self.state.step = step
            record = {"epoch": epoch + 1, "step": step, "mid_epoch": True}
            with self._saving_guard():
                commit_resume_point(
                    self.run_dir / "checkpoints",
                    self._weights(record),
                    self.optimizer,
                    self.data.train,
                    self.state,
                    sums,
                )
                self._flush_initial_record()
            self.state.step = 0
        barrier(self.dist)
        self._last_save = time.monotonic()


def _heads_meta(model: Any) -> dict[str, str]:
    """`classifier_keys` of a model with several classifier heads (experts), for analysis and
    evaluation; nothing for one head."""
    keys = classifier_keys(model)
    return {"classifier_keys": json.dumps(keys)} if len(keys) > 1 else {}
