"""Results folders are never replaced silently: the one rule `lwr eval`, `lwr analyze-weights`
and `lwr report --out` follow (docs/reliability.md, "Results are never replaced silently").

- A folder that holds files is refused unless `--overwrite`, and the refusal names the folder
  and a few of its files; nothing is written.
- `--overwrite` replaces the folder whole: the new results are written into a hidden folder
  beside it and swapped in when complete, so no stale file of an earlier call stays next to
  the new ones, and a failed command leaves the old results as they were.
- Even with `--overwrite`, a folder that holds a run, a prepared dataset, a sweep or one of
  the command's own inputs (or the working directory) is refused: it is not a results folder.

`check_results_folder` is called before the work (a long evaluation is not run only to be
refused); `results_folder` at the end, around the writing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lwrcli.errors import UserError
from lwrcli.runtime.files import temp_folder

# What only a run, a prepared dataset or a sweep holds: such a folder is never replaced.
NOT_RESULTS = {
    "run.json": "a run",
    "checkpoints": "a run",
    "manifest.json": "a prepared dataset",
    "sweep.json": "a sweep",
}


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def _shown(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    more = f", … ({len(names)} in all)" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def check_results_folder(
    out: Path, overwrite: bool, inputs: Iterable[Path] = (), given: bool = True
) -> None:
    """Refuse, before any work, a results folder the command may not write: a file, a folder
    with files (unless `overwrite`), or one that is not a results folder at all. `given`:
    the user named it with --out (else the command chose it, e.g. RUN/eval/last)."""
    out = Path(out)
    where = f"--out {out}" if given else f"The results folder {out}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{where} exists and is not a folder; choose a folder path.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(
            f"{where} already holds files ({_shown(out)}); nothing was written. Pass "
            "--overwrite to replace the folder (its old files are removed), or choose another "
            "--out."
        )
    held = next((what for name, what in NOT_RESULTS.items() if (out / name).exists()), None)
    if held is None:
        inside = [p for p in inputs if _inside(Path(p), out)]
        held = f"this command's input {inside[0]}" if inside else None
    if held is None and _inside(Path.cwd(), out):
        held = "the current directory"
    if held is not None:
        raise UserError(
            f"{where} holds {held}, not results: --overwrite replaces only a results "
            "folder. Choose another --out."
        )


@contextmanager
def results_folder(
    out: Path, overwrite: bool, inputs: Iterable[Path] = (), given: bool = True
) -> Iterator[Path]:
    """Yield an empty hidden folder beside `out` to write the results into; on success it
    becomes `out` (replacing an old one whole), on failure it is removed with any parent
    folder this call created, and `out` is left as it was."""
    out = Path(out)
    check_results_folder(out, overwrite, inputs, given)  # again: the folder may have changed
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_folder(out, ".tmp-")  # at the umask's mode, as every folder lwr creates
    try:
        yield staging
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            try:
                staging.rename(out)
            except BaseException:
                old.rename(out)  # the old results back in place
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for d in made:  # innermost first
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
