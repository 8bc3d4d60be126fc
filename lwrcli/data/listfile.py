"""ImageNet-LT, Places-LT and iNaturalist 2018 from their standard split lists.

A list has one `relative/path.jpg <class_id>` line per image, relative to the image root
(the published OLTR / decoupling lists all use relative paths: `train/n01440764/x.JPEG`,
`val/airfield/x.jpg`, `train_val2018/Plantae/7291/x.jpg`). Labels always come from the
lists, never from folder names. Paths must stay inside the root: absolute paths and `..`
are refused. iNaturalist 2018 has no test list; by convention its val list is the test set,
and the manifest says so. Class names are the image folder names (ImageNet wnids, Places
scene names) when each class's images share one distinct folder, `class_NNNN` otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from lwrcli.data.manifest import Manifest, fingerprint, make_manifest, staged_output, write_manifest
from lwrcli.errors import UserError

Source = Literal["imagenet-lt", "places-lt", "inat2018"]

STANDARD_FILES: dict[str, dict[str, str]] = {
    "imagenet-lt": {
        "train": "ImageNet_LT_train.txt",
        "val": "ImageNet_LT_val.txt",
        "test": "ImageNet_LT_test.txt",
    },
    "places-lt": {
        "train": "Places_LT_train.txt",
        "val": "Places_LT_val.txt",
        "test": "Places_LT_test.txt",
    },
    "inat2018": {"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt"},
}
EXPECTED_CLASSES = {"imagenet-lt": 1000, "places-lt": 365, "inat2018": 8142}


def check_inside_root(rel: str, where: str) -> None:
    """Refuse a list entry that could name a file outside the dataset root (string tests, not
    pathlib: this runs once per line of lists with hundreds of thousands of lines)."""
    if rel[0] in "/\\" or (len(rel) > 1 and rel[1] == ":" and rel[0].isalpha()):
        raise UserError(
            f"{where}: absolute path '{rel}'. Split lists cannot name files outside the "
            "dataset root; paths must be relative to --root."
        )
    if ".." in rel and ".." in rel.replace("\\", "/").split("/"):
        raise UserError(
            f"{where}: path '{rel}' climbs out with '..'. Split lists cannot name files outside "
            "the dataset root."
        )


def parse_list(path: Path, num_classes: int | None = None) -> tuple[list[str], np.ndarray]:
    """(relative paths, labels (N,) int64) of a `relative/path label` list.

    Blank lines are skipped; a path may contain spaces (the label is the last field). Every
    error names file:line: a malformed line, a non-integer or out-of-range label (range
    checked when `num_classes` is given), a path that leaves the root.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Split list {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"Split list {path} is not UTF-8 text ({exc.reason}).") from None
    paths: list[str] = []
    labels: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        parts = raw.rsplit(maxsplit=1)
        if not parts:
            continue
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            raise UserError(f"{where}: expected 'relative/path label', got '{raw.strip()[:120]}'.")
        rel, label_text = parts
        rel = rel.strip()
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(
                f"{where}: the label '{label_text}' is not an integer class id."
            ) from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes else ">= 0"
            raise UserError(f"{where}: label {label} is outside {bound}.")
        check_inside_root(rel, where)
        paths.append(rel)
        labels.append(label)
    if not paths:
        raise UserError(f"Split list {path} has no entries.")
    return paths, np.asarray(labels, dtype=np.int64)


def verify_files(
    root: Path, paths: Sequence[str], workers: int = 16, progress: bool = True
) -> None:
    """Check every listed file exists (in parallel); name the first missing and the count."""
    root = Path(root)

    def exists(rel: str) -> bool:
        return os.path.isfile(root / rel)

    missing: list[str] = []
    chunk = 2048
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"checking {len(paths):,} files", total=len(paths))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(paths), chunk):
                part = paths[start : start + chunk]
                for rel, ok in zip(part, pool.map(exists, part)):
                    if not ok:
                        missing.append(rel)
                if bar is not None:
                    bar.update(task, advance=len(part))
    finally:
        if bar is not None:
            bar.stop()
    if missing:
        shown = ", ".join(missing[:5])
        raise UserError(
            f"{len(missing):,} of {len(paths):,} listed images are missing under {root} "
            f"(first: {shown}). Check --root, or pass --no-verify to skip this check."
        )


def _lists_for(
    source: Source,
    split_dir: Path | None,
    train_list: Path | None,
    val_list: Path | None,
    test_list: Path | None,
) -> dict[str, Path]:
    given = {"train": train_list, "val": val_list, "test": test_list}
    lists: dict[str, Path] = {}
    for split, std_name in STANDARD_FILES[source].items():
        if given[split] is not None:
            lists[split] = Path(given[split])  # type: ignore[arg-type]
        elif split_dir is not None and (Path(split_dir) / std_name).is_file():
            lists[split] = Path(split_dir) / std_name
    if test_list is not None and source == "inat2018":
        lists["test"] = Path(test_list)
    if "train" not in lists:
        std = STANDARD_FILES[source]["train"]
        raise UserError(
            f"prepare-data {source} needs the train list: pass --train-list PATH or a "
            f"--split-dir that holds {std} (it ships with the dataset's split files)."
        )
    return lists


def class_names_from_paths(paths: Sequence[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """The parent folder of each class's images when every image of a class sits in the same
    folder and the names are distinct; `class_NNNN` otherwise."""
    fallback = [f"class_{c:04d}" for c in range(num_classes)]
    names: dict[int, str] = {}
    for rel, label in zip(paths, labels.tolist()):
        folder = PurePosixPath(rel.replace("\\", "/")).parent.name
        if names.setdefault(label, folder) != folder or not folder:
            return fallback
    candidate = [names.get(c, "") for c in range(num_classes)]
    if all(candidate) and len(set(candidate)) == num_classes:
        return candidate
    return fallback


def describe_lists(lists: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Per split: images, classes present, and the smallest / largest class (label id range
    0..max), for checking a list against its published statistics without preparing it."""
    stats = {}
    for split, path in lists.items():
        _, labels = parse_list(path)
        counts = np.bincount(labels)
        present = counts[counts > 0]
        stats[split] = {
            "images": int(len(labels)),
            "classes": int(len(present)),
            "max_label": int(len(counts) - 1),
            "min_count": int(present.min()),
            "max_count": int(present.max()),
        }
    return stats


def prepare_listfile(
    source: Source,
    root: Path,
    out: Path,
    split_dir: Path | None = None,
    train_list: Path | None = None,
    val_list: Path | None = None,
    test_list: Path | None = None,
    verify: bool = True,
    workers: int = 16,
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Normalise the split lists into `out/{split}.txt` + manifest.json (storage `lists`).

    Lists given by path win over the standard names in `split_dir`; the train list is
    required. num_classes = largest label + 1 over all lists, and every class needs a train
    image. With `verify`, every listed file must exist under `root` (checked in parallel).
    `out` is written atomically and refused when non-empty unless `overwrite`.
    """
    lists = _lists_for(source, split_dir, train_list, val_list, test_list)
    notes: list[str] = []
    if source == "inat2018" and "test" not in lists and "val" in lists:
        lists["test"] = lists.pop("val")  # the community convention: val is the test set
        notes.append("iNaturalist 2018 has no test list: its val list is used as the test split")
    root = Path(root).resolve()
    if verify and not root.is_dir():
        raise UserError(f"--root {root} is not a folder.")
    # Entering the staging first refuses a used --out before minutes of parsing and checking.
    with staged_output(out, overwrite) as tmp:
        parsed = {split: parse_list(path) for split, path in lists.items()}
        num_classes = int(max(int(lab.max()) for _, lab in parsed.values()) + 1)
        counts = np.bincount(parsed["train"][1], minlength=num_classes)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise UserError(
                f"{len(empty)} classes have no image in the train list {lists['train']} "
                f"(e.g. class {int(empty[0])}); labels must be 0..C-1 with every class present."
            )
        expected = EXPECTED_CLASSES[source]
        if num_classes != expected:
            notes.append(f"{num_classes} classes, where standard {source} has {expected}")
        if verify:
            every = [p for paths, _ in parsed.values() for p in paths]
            verify_files(root, every, workers, progress)
        blobs: dict[str, bytes] = {}
        for split, (paths, labels) in parsed.items():
            blobs[split] = "".join(f"{p} {y}\n" for p, y in zip(paths, labels.tolist())).encode()
            (tmp / f"{split}.txt").write_bytes(blobs[split])
        if source == "inat2018":  # its folders are the class ids themselves
            class_names = [f"class_{c:04d}" for c in range(num_classes)]
        else:
            class_names = class_names_from_paths(*parsed["train"], num_classes)
        manifest = make_manifest(
            name=source,
            source=source,
            storage="lists",
            class_names=class_names,
            class_counts=counts.tolist(),
            splits={split: len(paths) for split, (paths, _) in parsed.items()},
            test_split="test" if "test" in parsed else "val",
            val_split="val" if "val" in parsed and "test" in parsed else None,
            image_root=str(root),
            fingerprint=fingerprint(blobs),
            split_fingerprints={k: fingerprint({k: v}) for k, v in blobs.items()},
            notes=notes + [f"{k} list: {Path(v).resolve()}" for k, v in lists.items()],
        )
        write_manifest(tmp, manifest)
    return manifest
