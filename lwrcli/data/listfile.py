"""ImageNet-LT, Places-LT and iNaturalist 2018 from their standard split lists.

A list has one `relative/path.jpg <class_id>` line per image, relative to the image root
(the published OLTR / decoupling lists all use relative paths: `train/n01440764/x.JPEG`,
`val/airfield/x.jpg`, `train_val2018/Plantae/7291/x.jpg`). Labels always come from the
lists, never from folder names. Paths must stay inside the root: absolute paths and `..`
are refused. iNaturalist 2018 has no test list; by convention its val list is the test set,
and the manifest says so. Class names are the image folder names (ImageNet wnids, Places
scene names) when each class's images share one distinct folder, `class_NNNN` otherwise.
The published lists lwr ships (data/shipped.py) are used for every split not given by path or
--split-dir; lists may be gzip-compressed (`.gz`).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import numpy as np

from lwrcli.data.classnames import OPEN_CLIP_IMAGENET, GivenNames, imagenet_class_names
from lwrcli.data.imagecheck import check_images, keep_good, name_some, refuse_bad
from lwrcli.data.manifest import (
    GROUPS,
    Manifest,
    fingerprint,
    make_manifest,
    staged_output,
    write_manifest,
)
from lwrcli.data.shipped import (
    DATASET_DIRS,
    STANDARD_FILES,
    Traversable,
    read_shipped,
    shipped_list,
)
from lwrcli.errors import UserError

# A list is a user's file (Path) or one shipped inside the package (a Traversable).
ListPath = Path | Traversable

Source = Literal["imagenet-lt", "places-lt", "inat2018"]

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


@contextmanager
def open_list(path: ListPath) -> Iterator[IO[str]]:
    """A list's text, line by line; gunzipped when the name ends in .gz (shipped lists are,
    and users may keep theirs compressed too)."""
    with path.open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
        yield io.TextIOWrapper(stream, encoding="utf-8")  # type: ignore[arg-type]


def parse_list(path: ListPath, num_classes: int | None = None) -> tuple[list[str], np.ndarray]:
    """(relative paths, labels (N,) int64) of a `relative/path label` list, plain or .gz.

    Blank lines are skipped; a path may contain spaces (the label is the last field). Every
    error names file:line: a malformed line, a non-integer or out-of-range label (range
    checked when `num_classes` is given), a path that leaves the root.
    """
    if not path.is_file():
        raise UserError(f"Split list {path} does not exist.")
    paths: list[str] = []
    labels: list[int] = []
    try:
        with open_list(path) as lines:
            for lineno, raw in enumerate(lines, start=1):
                parts = raw.rsplit(maxsplit=1)
                if not parts:
                    continue
                where = f"{path}:{lineno}"
                if len(parts) != 2:
                    got = raw.strip()[:120]
                    raise UserError(f"{where}: expected 'relative/path label', got '{got}'.")
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
    except UnicodeDecodeError as exc:
        raise UserError(f"Split list {path} is not UTF-8 text ({exc.reason}).") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"Split list {path} is not a complete gzip file ({exc}).") from None
    if not paths:
        raise UserError(f"Split list {path} has no entries.")
    return paths, np.asarray(labels, dtype=np.int64)


def _lists_for(
    source: Source,
    split_dir: Path | None,
    train_list: Path | None,
    val_list: Path | None,
    test_list: Path | None,
    eval_only: bool = False,
) -> tuple[dict[str, ListPath], dict[str, str]]:
    """({split: list}, {split: where it came from}). Priority: a list given by path, then the
    standard name (plain or .gz) in `split_dir`, then the copy shipped with lwr. Only
    `eval_only` lets the train list be missing."""
    if split_dir is not None and not Path(split_dir).is_dir():
        raise UserError(f"--split-dir {split_dir} is not a folder.")
    given = {"train": train_list, "val": val_list, "test": test_list}
    lists: dict[str, ListPath] = {}
    origins: dict[str, str] = {}
    for split, std_name in STANDARD_FILES[source].items():
        candidates = [] if split_dir is None else [Path(split_dir) / std_name]
        candidates += [c.with_name(c.name + ".gz") for c in candidates]
        in_dir = next((c for c in candidates if c.is_file()), None)
        shipped = shipped_list(source, split)
        mine = given[split]
        if mine is not None:
            lists[split], origins[split] = Path(mine), str(Path(mine).resolve())
        elif in_dir is not None:
            lists[split], origins[split] = in_dir, str(in_dir.resolve())
        elif shipped is not None:
            lists[split], origins[split] = shipped, f"shipped with lwr ({std_name})"
    if test_list is not None and source == "inat2018":
        lists["test"] = Path(test_list)
        origins["test"] = str(Path(test_list).resolve())
    if "train" not in lists and not eval_only:
        std = STANDARD_FILES[source]["train"]
        shipped = [s for s in ("val", "test") if origins.get(s, "").startswith("shipped")]
        also = {0: "", 1: " list ships", 2: " lists ship"}[len(shipped)]
        raise UserError(
            f"prepare-data {source} needs its train list {std}, which is too large to ship "
            f"with lwr: pass it with --train-list PATH (or --split-dir DIR holding {std}), or "
            "pass --eval-only to prepare the test split alone (for zero-shot evaluation)."
            + (f" The {' and '.join(shipped)}{also} with lwr." if shipped else "")
        )
    return lists, origins


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


def describe_lists(lists: dict[str, ListPath]) -> dict[str, dict[str, int]]:
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


def _train_counts(
    labels: np.ndarray, num_classes: int, where: str, origins: dict[str, str]
) -> np.ndarray:
    """Train images per class; every class id 0..C-1 needs one."""
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        shipped = [s for s, o in origins.items() if o.startswith("shipped")]
        hint = (
            f" The {'/'.join(shipped)} list{'s' if len(shipped) > 1 else ''} shipped with lwr "
            f"{'were' if len(shipped) > 1 else 'was'} used (labels 0..{num_classes - 1}); for "
            f"lists of your own pass {' '.join(f'--{s}-list' for s in shipped)} too."
            if shipped
            else ""
        )
        raise UserError(
            f"{len(empty)} classes have no image in {where} (e.g. class {int(empty[0])}); "
            f"labels must be 0..C-1 with every class present in train.{hint}"
        )
    return counts


def _eval_only(
    source: Source, counts_list: ListPath | None, num_classes: int, origins: dict[str, str]
) -> tuple[np.ndarray, dict[str, list[int]] | None, int]:
    """(train counts, shot groups or None, num_classes) of an evaluation-only dataset: counted
    from the train list's labels when there is one (no image of it is read), else zeros with
    the published shot groups shipped with lwr (ImageNet-LT's train list is too large to
    ship; its groups are not)."""
    if counts_list is not None:
        _, labels = parse_list(counts_list)
        num_classes = max(num_classes, int(labels.max()) + 1)
        where = f"the train list {counts_list} (read for its counts only)"
        return _train_counts(labels, num_classes, where, origins), None, num_classes
    try:
        text = read_shipped(source, f"{DATASET_DIRS[source]}_shot_groups.tsv")
    except KeyError:
        raise UserError(
            f"prepare-data {source} --eval-only needs the train list for the shot groups "
            f"(its labels only, no images): pass --train-list PATH."
        ) from None
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for class_id, group in rows:
        groups[group].append(int(class_id))
    total = len(rows)
    if num_classes > total:
        raise UserError(
            f"The test list has labels up to {num_classes - 1}, but {source} has {total} classes."
        )
    return np.zeros(total, dtype=np.int64), groups, total


def _eval_only_note(counts_list: ListPath | None, origins: dict[str, str]) -> str:
    if counts_list is not None:
        return f"evaluation only: no train split; train counts from {origins['train']}"
    return (
        "evaluation only: no train split; train counts unknown, shot groups from the "
        "published groups shipped with lwr"
    )


def _list_class_names(
    source: Source, parsed: dict[str, tuple[list[str], np.ndarray]], num_classes: int
) -> tuple[list[str], str]:
    """(names, where they came from): ImageNet's standard names (open_clip ships them, in the
    label order ImageNet-LT uses), else the image folder names of the train (or test) list,
    else class ids (iNaturalist's folders are the ids themselves)."""
    if source == "imagenet-lt" and num_classes == EXPECTED_CLASSES[source]:
        names = imagenet_class_names()
        if names is not None:
            return names, OPEN_CLIP_IMAGENET
    ids = [f"class_{c:04d}" for c in range(num_classes)]
    if source == "inat2018":
        return ids, "class ids (pass --class-names categories.json for species names)"
    split = "train" if "train" in parsed else next(iter(parsed))
    names = class_names_from_paths(*parsed[split], num_classes)
    return names, "class ids" if names == ids else f"image folder names ({split} list)"


def prepare_listfile(
    source: Source,
    root: Path,
    out: Path,
    split_dir: Path | None = None,
    train_list: Path | None = None,
    val_list: Path | None = None,
    test_list: Path | None = None,
    verify: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    skip_bad: bool = False,
    eval_only: bool = False,
    given_names: GivenNames | None = None,
) -> Manifest:
    """Normalise the split lists into `out/{split}.txt` + manifest.json (storage `lists`).

    Lists given by path win over the standard names in `split_dir`, which win over the lists
    shipped with lwr; the train list is required. num_classes = largest label + 1 over all
    lists, and every class needs a train image. With `verify`, every listed file must exist
    under `root` and decode (checked in parallel, see imagecheck); with `skip_bad` as well,
    files that exist but do not decode are left out and named in the manifest's `skipped`.
    `out` is written atomically and refused when non-empty unless `overwrite`.

    `eval_only` prepares the test split alone (plus a val list given by path or --split-dir):
    only the images it names are checked, and train counts come from the train list without
    its images (see `_eval_only`).
    """
    if skip_bad and not verify:
        raise UserError("--skip-bad needs the image check; drop --no-verify.")
    lists, origins = _lists_for(source, split_dir, train_list, val_list, test_list, eval_only)
    notes: list[str] = []
    counts_list: ListPath | None = None
    if eval_only:
        counts_list = lists.pop("train", None)
        if "val" in lists and origins["val"].startswith("shipped") and source != "inat2018":
            del lists["val"], origins["val"]  # its images are train images: not needed here
    if source == "inat2018" and "test" not in lists and "val" in lists:
        lists["test"] = lists.pop("val")  # the community convention: val is the test set
        origins["test"] = origins.pop("val")
        notes.append("iNaturalist 2018 has no test list: its val list is used as the test split")
    root = Path(root).resolve()
    if verify and not root.is_dir():
        raise UserError(f"--root {root} is not a folder.")
    # Entering the staging first refuses a used --out before minutes of parsing and checking.
    with staged_output(out, overwrite) as tmp:
        parsed = {split: parse_list(path) for split, path in lists.items()}
        num_classes = int(max(int(lab.max()) for _, lab in parsed.values()) + 1)
        known = True
        if eval_only:
            counts, groups, num_classes = _eval_only(source, counts_list, num_classes, origins)
            known = counts_list is not None
            notes.append(_eval_only_note(counts_list, origins))
        else:
            train_where = f"the train list {lists['train']}"
            counts = _train_counts(parsed["train"][1], num_classes, train_where, origins)
            groups = None
        expected = EXPECTED_CLASSES[source]
        if num_classes != expected:
            notes.append(f"{num_classes} classes, where standard {source} has {expected}")
        skipped: dict[str, str] = {}
        if verify:
            every = [p for paths, _ in parsed.values() for p in paths]
            skipped = check_images(root, every, workers, progress)
            refuse_bad(skipped, len(every), root, skip_bad)
        if skipped:
            for split, (paths, labels) in parsed.items():
                keep = keep_good(paths, skipped)
                parsed[split] = ([paths[i] for i in keep], labels[keep])
            counts = (
                counts
                if eval_only
                else _train_counts(
                    parsed["train"][1],
                    num_classes,
                    f"the train split once --skip-bad left out {name_some(skipped, 5)}",
                    origins,
                )
            )
            notes.append(
                f"{len(skipped)} corrupt or unreadable images left out (--skip-bad); "
                "'skipped' names them"
            )
        blobs: dict[str, bytes] = {}
        for split, (paths, labels) in parsed.items():
            blobs[split] = "".join(f"{p} {y}\n" for p, y in zip(paths, labels.tolist())).encode()
            (tmp / f"{split}.txt").write_bytes(blobs[split])
        class_names, names_source = _list_class_names(source, parsed, num_classes)
        manifest = make_manifest(
            name=source + ("-eval" if eval_only else ""),
            source=source,
            storage="lists",
            class_names=class_names,
            class_names_source=names_source,
            given_names=given_names,
            class_counts=counts.tolist(),
            class_counts_known=known,
            **({"shot_groups": groups} if groups is not None else {}),
            splits={split: len(paths) for split, (paths, _) in parsed.items()},
            test_split="test" if "test" in parsed else "val",
            val_split="val" if "val" in parsed and "test" in parsed else None,
            image_root=str(root),
            fingerprint=fingerprint(blobs),
            split_fingerprints={k: fingerprint({k: v}) for k, v in blobs.items()},
            notes=notes + [f"{k} list: {origins[k]}" for k in lists],
            skipped=skipped,
        )
        write_manifest(tmp, manifest)
    return manifest
