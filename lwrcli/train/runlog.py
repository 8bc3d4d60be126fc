"""A run folder's `metrics.jsonl`: one JSON record per completed epoch, appended by the
trainer, read by resume and reports. A crash mid-write leaves at most a torn last line,
which readers drop; any other damage is a clear error, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lwrcli.errors import UserError
from lwrcli.runtime.files import write_atomic

METRICS = "metrics.jsonl"


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line, flushed to disk before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a torn last line (no newline, or not JSON) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read {path}: {exc}.") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "epoch" not in record:
                raise ValueError("not an epoch record")
        except ValueError:
            if number >= len(lines) - 1:  # the last line: a write cut short by a crash
                break
            raise UserError(
                f"{path} line {number} is damaged (not an epoch record). Fix or remove that "
                "line; the checkpoints are not affected."
            ) from None
        records.append(record)
    return records


def reconcile_metrics(path: Path, epoch: int, record: dict[str, Any] | None) -> None:
    """Make the file agree with a checkpoint after `epoch` epochs: drop records past it (and a
    torn line), and restore the checkpoint's own record of `epoch` if the crash came between
    the checkpoint and its metrics line. Rewritten atomically."""
    records = [r for r in read_metrics(path) if int(r["epoch"]) <= epoch]
    if record is not None and epoch > 0 and not any(int(r["epoch"]) == epoch for r in records):
        records.append(record)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
