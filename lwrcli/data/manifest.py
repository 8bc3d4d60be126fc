"""The prepared dataset's `manifest.json`: what was built, from what, and how to read it back.

Two storage kinds:
- `arrays`: small images as uint8 NCHW tensors in `train.safetensors` / `test.safetensors`
  (and `val.safetensors` when present), keys `images` (N, 3, H, W) uint8, `labels` (N,) int64,
  and for train `source_indices` (N,) int64, the indices into the source's own train set.
- `lists`: large images as `{split}.txt` files of `relative/path label` lines, read against
  `image_root` (an absolute path recorded in the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from lwrcli import __version__
from lwrcli.data.classnames import GivenNames, choose_names
from lwrcli.errors import UserError
from lwrcli.runtime.files import temp_folder

MANIFEST = "manifest.json"

# Shot groups by train images per class (the standard long-tailed convention).
MANY_MIN = 101  # many: > 100
FEW_MAX = 19  # few: < 20


GROUPS = ("many", "medium", "few")


def shot_group(count: int) -> str:
    if count >= MANY_MIN:
        return "many"
    if count <= FEW_MAX:
        return "few"
    return "medium"


def shot_groups(class_counts: Sequence[int]) -> dict[str, list[int]]:
    """Class ids of each shot group: many (> 100 train images), medium (20-100), few (< 20)."""
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for c, n in enumerate(class_counts):
        groups[shot_group(int(n))].append(c)
    return groups


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    source: str  # cifar10 | cifar100 | synthetic | imagenet-lt | places-lt | inat2018 | folder
    synthetic: bool = False
    storage: Literal["arrays", "lists"]
    num_classes: int
    class_names: list[str]
    # Where the names came from (lwrcli.data.classnames): e.g. "cifar meta file",
    # "open_clip ImageNet class names", "--class-names FILE", "folder names". None in
    # manifests written before the field existed.
    class_names_source: str | None = None
    class_counts: list[int]  # train images per class id (zeros when not known, see below)
    # False for an evaluation-only dataset prepared without its train list: class_counts are
    # then zeros and shot_groups come from the published groups.
    class_counts_known: bool = True
    splits: dict[str, int]  # split name -> number of images
    # Which split plays the test role (iNaturalist has no test list: its val list is the test).
    test_split: str = "test"
    val_split: str | None = None
    imbalance_factor: float | None = None
    profile: str | None = None
    seed: int | None = None
    # folder: the fewest train images every class kept before the profile (given with
    # --min-per-class, the profile is also clipped there; the notes say which).
    min_per_class: int | None = None
    # folder with a profile: class ids in the order the profile was applied (largest train
    # count first, ties by name), and each class id's train count before subsampling.
    class_order: list[int] | None = None
    counts_before_profile: list[int] | None = None
    image_size: int | None = None  # arrays: H = W
    image_root: str | None = None  # lists: absolute root of the relative paths
    shot_groups: dict[str, list[int]]
    fingerprint: str  # sha256 over the split contents
    split_fingerprints: dict[str, str] = {}
    notes: list[str] = []
    # Images left out by `prepare-data --skip-bad`: relative path -> why. Defaults to empty so
    # manifests written before the field existed still load.
    skipped: dict[str, str] = {}
    tool_version: str = __version__


def make_manifest(given_names: GivenNames | None = None, **fields: Any) -> Manifest:
    """Fill in the derived fields (shot groups) and validate; `given_names` (a --class-names
    file) replace the source's names, refused when their count differs."""
    fields["class_names"], fields["class_names_source"] = choose_names(
        given_names, fields["class_names"], fields.get("class_names_source") or "unknown"
    )
    counts = fields["class_counts"]
    fields.setdefault("shot_groups", shot_groups(counts))
    fields.setdefault("num_classes", len(counts))
    return Manifest(**fields)


def group_counts(manifest: Manifest) -> list[int]:
    """Per-class counts that place each class in its shot group: the train counts when known,
    else stand-ins (101 many, 20 medium, 0 few) built from the manifest's published groups,
    for reports only (never a prior for logit adjustment)."""
    if manifest.class_counts_known:
        return list(manifest.class_counts)
    stand_in = {"many": MANY_MIN, "medium": FEW_MAX + 1, "few": 0}
    counts = [0] * manifest.num_classes
    for group, classes in manifest.shot_groups.items():
        for c in classes:
            counts[c] = stand_in[group]
    return counts


def fingerprint(parts: dict[str, bytes]) -> str:
    """sha256 over named byte blobs, in name order."""
    h = hashlib.sha256()
    for key in sorted(parts):
        h.update(key.encode())
        h.update(len(parts[key]).to_bytes(8, "little"))
        h.update(parts[key])
    return h.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    (folder / MANIFEST).write_text(text)


def read_manifest(folder: Path) -> Manifest:
    """Read a prepared dataset's manifest, with a message that says how to make one."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.exists():
        raise UserError(
            f"Dataset folder {folder} does not exist. Prepare one first, for example: "
            f"'lwr prepare-data synthetic --out {folder}' or "
            f"'lwr prepare-data cifar100 --root RAW_DIR --out {folder}'."
        )
    if not path.is_file():
        raise UserError(
            f"{folder} is not a prepared dataset (no {MANIFEST}). Create it with "
            f"'lwr prepare-data SOURCE --root RAW_DIR --out {folder}'."
        )
    try:
        return Manifest.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as exc:
        raise UserError(
            f"{path} is damaged or from an incompatible version ({exc.__class__.__name__}); "
            "prepare the dataset again with 'lwr prepare-data'."
        ) from None


@contextmanager
def staged_output(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Write a dataset into a temporary sibling folder and move it into place only on success.

    An existing prepared dataset is never touched unless `overwrite`, and even then it is
    replaced only after the new one is complete, so a failed command loses nothing.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"--out {out} already exists and is not empty; nothing was changed. Choose a new "
            "folder or pass --overwrite to replace it."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(out, ".tmp-")  # at the umask's mode: mkdtemp's 0700 would outlive the rename
    try:
        yield tmp
        if out.exists():
            backup = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(backup)
            tmp.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
