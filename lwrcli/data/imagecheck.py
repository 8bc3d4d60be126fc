"""Every image of a prepared dataset is checked once, by `prepare-data`, so broken data fails
in seconds instead of hours into a training run.

The check is a full decode with PIL (`Image.open(...).load()`, `ImageFile.LOAD_TRUNCATED_IMAGES`
left at PIL's default False), not `Image.verify()`: verify reads only headers and markers, and a
JPEG cut at half its length passes it (measured), whereas `load()` raises on a truncated or
corrupt scan just as the training loader's PIL path would. It costs about 1 ms per ImageNet-sized
(500x375) JPEG on one core (measured; JPEG draft mode saved only ~25 %, as entropy decoding
dominates, so it is not used): ImageNet-LT's 186k images are about 3 CPU-minutes, spread over a
thread pool (PIL releases the GIL while decoding, so threads use every core and also hide file
system latency on network storage).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lwrcli.errors import UserError

MISSING = "missing"
SHOWN = 20  # bad files named in an error; the rest are counted


def check_image(path: str | Path) -> str | None:
    """None when the file decodes as an image, else why not (`MISSING` when absent)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        return MISSING
    except PermissionError:
        return "unreadable (permission denied)"
    except IsADirectoryError:
        return "a folder, not an image"
    except UnidentifiedImageError:
        return "not an image (unknown format)"
    except Image.DecompressionBombError:
        return "too many pixels (PIL's decompression-bomb limit)"
    except Exception as exc:  # any decoder failure means the loader would fail on it too
        text = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        if "truncated" in text.lower():
            return f"truncated ({text})"
        return f"does not decode ({text})"
    return None


def default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def check_images(
    root: Path, paths: Sequence[str], workers: int | None = None, progress: bool = True
) -> dict[str, str]:
    """{relative path: reason} for every listed file under `root` that is missing or does not
    decode, checked in parallel with a transient progress bar on stderr."""
    root = Path(root)
    unique = list(dict.fromkeys(paths))  # a file listed in two splits is decoded once
    bad: dict[str, str] = {}
    chunk = 1024
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        if console.is_terminal:  # a transient bar is noise in a log file
            bar = Progress(console=console, transient=True)
            bar.start()
            task = bar.add_task(f"checking {len(unique):,} images", total=len(unique))
    try:
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
            for start in range(0, len(unique), chunk):
                part = unique[start : start + chunk]
                for rel, why in zip(part, pool.map(check_image, [root / p for p in part])):
                    if why is not None:
                        bad[rel] = why
                if bar is not None:
                    bar.update(task, advance=len(part))
    finally:
        if bar is not None:
            bar.stop()
    return bad


def name_some(bad: dict[str, str], limit: int = SHOWN) -> str:
    """'a.jpg (truncated ...), b.png (not an image ...) and 3 more'."""
    shown = ", ".join(f"{p} ({why})" for p, why in list(bad.items())[:limit])
    rest = len(bad) - limit
    return shown + (f" and {rest:,} more" if rest > 0 else "")


def refuse_bad(bad: dict[str, str], total: int, root: Path, skip_bad: bool) -> None:
    """Raise unless every image is good, or the only bad ones decode badly and `skip_bad`.

    Missing files always fail: they mostly mean a wrong --root or an incomplete download, and
    silently dropping them would hide that.
    """
    missing = [p for p, why in bad.items() if why == MISSING]
    if missing:
        raise UserError(
            f"{len(missing):,} of {total:,} listed images are missing under {root} "
            f"(first: {', '.join(missing[:5])}). Check --root, or pass --no-verify to skip "
            "this check."
        )
    if bad and not skip_bad:
        raise UserError(
            f"{len(bad):,} of {total:,} images under {root} are corrupt or unreadable: "
            f"{name_some(bad)}. Nothing was written. Replace or delete them, or pass --skip-bad "
            "to leave them out of the splits (they are then recorded in manifest.json)."
        )


def keep_good(paths: Sequence[str], bad: dict[str, str]) -> list[int]:
    """Indices of the entries of `paths` that are not in `bad`."""
    return [i for i, p in enumerate(paths) if p not in bad]
