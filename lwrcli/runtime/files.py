"""The one rule for the modes of what lwr writes: every file and folder gets the mode the
user's umask gives (0666 / 0777 minus umask; 0777 minus umask for a script meant to run),
the way `open()` and `mkdir` would create it, including files written to a temporary name
and renamed into place (`tempfile.mkstemp` / `mkdtemp` create 0600 / 0700, and safetensors'
`save_file` 0600; a rename keeps that mode, so colleagues on shared storage could not read
the dataset or the weights).

Every temp-then-rename write goes through `temp_beside` / `temp_folder` / `write_atomic`
(or calls `fix_mode` on what another library wrote) before the rename. A floor-level module
(standard library only), so every layer can use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux
    /proc/self/status): setting it to read it back would briefly change it for every thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(executable: bool = False) -> int:
    """0666 (0777 for a script) minus the umask: what `open()` gives a new file."""
    return (0o777 if executable else 0o666) & ~umask()


def folder_mode() -> int:
    """0777 minus the umask: what `mkdir` gives a new folder."""
    return 0o777 & ~umask()


def fix_mode(path: Path | str, executable: bool = False) -> Path:
    """Give a file or folder that lwr created the mode the umask gives; returns the path."""
    path = Path(path)
    path.chmod(folder_mode() if path.is_dir() else file_mode(executable))
    return path


def temp_beside(path: Path | str) -> Path:
    """An empty temporary file in `path`'s folder (on the same file system, so it can be
    renamed onto `path`), already at the umask's mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return fix_mode(tmp)


def temp_folder(path: Path | str, infix: str = ".") -> Path:
    """An empty temporary folder beside `path` (`.NAME{infix}XXXX.tmp`), at the umask's mode,
    to be filled and renamed onto `path`."""
    path = Path(path)
    made = tempfile.mkdtemp(prefix=f".{path.name}{infix}", suffix=".tmp", dir=path.parent)
    return fix_mode(made)


def write_atomic(path: Path | str, data: str | bytes, executable: bool = False) -> Path:
    """Write `data` (text as UTF-8) to a temporary file beside `path`, flush it to disk, give it
    the umask's mode, and rename it onto `path`: readers see the old file or the whole new one,
    never half of one. The temporary file is removed again on any failure."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if executable:
            fix_mode(tmp, executable=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
