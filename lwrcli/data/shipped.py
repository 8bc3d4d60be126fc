"""The standard split lists that ship inside the package, so `prepare-data` needs no download.

`lwrcli/splits/<Dataset>/<file>.gz` holds, gzip-compressed (`gzip -9 -n`, reproducible bytes),
the published lists of the long-tailed benchmarks (OLTR / decoupling / SADE releases):
ImageNet-LT val and test plus its shot groups, Places-LT train/val/test and the iNaturalist
2018 val list. ImageNet-LT train (115,846 lines) and iNaturalist 2018 train (437,513 lines)
are too large to ship; users pass them by path. Read through importlib.resources, so this
works from a wheel, an editable install or a zip import alike.
"""

from __future__ import annotations

import gzip
from importlib.resources import files

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

# Standard file names of each source's lists (as published; the train lists of ImageNet-LT
# and iNaturalist 2018 are not shipped).
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
DATASET_DIRS = {"imagenet-lt": "ImageNet_LT", "places-lt": "Places_LT", "inat2018": "iNaturalist18"}


def splits_root() -> Traversable:
    return files("lwrcli") / "splits"


def shipped_file(source: str, name: str) -> Traversable | None:
    """The compressed resource of a standard file name (e.g. 'ImageNet_LT_shot_groups.tsv'),
    or None when lwr does not ship it."""
    resource = splits_root() / DATASET_DIRS[source] / f"{name}.gz"
    return resource if resource.is_file() else None


def shipped_list(source: str, split: str) -> Traversable | None:
    """The shipped `.gz` list of a source's split, or None (train of ImageNet-LT / iNat)."""
    name = STANDARD_FILES[source].get(split)
    return shipped_file(source, name) if name else None


def read_shipped(source: str, name: str) -> str:
    """The decompressed text of a shipped file; KeyError naming it when it is not shipped."""
    resource = shipped_file(source, name)
    if resource is None:
        raise KeyError(f"{name} is not shipped with lwr")
    with resource.open("rb") as raw:
        return gzip.decompress(raw.read()).decode("utf-8")


def shipped_files() -> dict[str, Traversable]:
    """Every shipped file by its standard (uncompressed) name."""
    found: dict[str, Traversable] = {}
    for source in DATASET_DIRS.values():
        for entry in (splits_root() / source).iterdir():
            if entry.name.endswith(".gz"):
                found[entry.name[: -len(".gz")]] = entry
    return found
