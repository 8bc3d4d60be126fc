"""Class names of a prepared dataset and where they came from.

Text-initialised heads and zero-shot evaluation encode the class names, so names matter more
than as table labels: `class_NNNN` or an ImageNet wnid says nothing to a text encoder. Each
source picks the best names it can find and the manifest records which (`class_names_source`);
`prepare-data --class-names FILE` overrides them for any source.

The manifest stores names as their source spells them (CIFAR's `aquarium_fish`, a folder's
`golden_retriever`): checkpoints carry the names and stage 2 / eval compare them with the
dataset's, so re-spelling stored names would make existing checkpoints refuse re-prepared
datasets. `prompt_name` makes them readable (`_` and `/` -> space) where text is encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lwrcli.errors import UserError

OPEN_CLIP_IMAGENET = "open_clip ImageNet class names"


@dataclass(frozen=True)
class GivenNames:
    """Names read from a `--class-names` file (label order) and the file they came from."""

    names: list[str]
    path: Path

    @property
    def source(self) -> str:
        return f"--class-names {self.path}"


def prompt_name(name: str) -> str:
    """A stored class name as text for a prompt: `aquarium_fish` -> `aquarium fish`,
    `apartment_building/outdoor` -> `apartment building outdoor`."""
    return " ".join(name.replace("_", " ").replace("/", " ").split())


def _category(name: str) -> str:
    """Places365's `/a/airfield` -> `airfield`, `/a/apartment_building/outdoor` ->
    `apartment_building/outdoor` (the leading `/<letter>/` is an alphabetical index)."""
    parts = [p for p in name.strip().split("/") if p]
    if name.startswith("/") and len(parts) > 1 and len(parts[0]) == 1:
        parts = parts[1:]
    return "/".join(parts) if name.startswith("/") else name.strip()


def _by_id(pairs: list[tuple[int, str]], path: Path) -> list[str]:
    """Names ordered by their ids, which must be exactly 0..C-1."""
    ids = sorted(i for i, _ in pairs)
    if ids != list(range(len(pairs))):
        missing = sorted(set(range(len(pairs))) - set(ids))
        raise UserError(
            f"--class-names {path}: the class ids must be 0..{len(pairs) - 1}, each once"
            + (f" (e.g. {missing[0]} is missing)." if missing else " (an id repeats).")
        )
    return [name for _, name in sorted(pairs)]


def _is_category(item: Any) -> bool:
    return isinstance(item, dict) and {"id", "name"} <= set(item)


def _from_json(data: Any, path: Path) -> list[str]:
    """A list of names, a list of {"id", "name", ...} (iNaturalist's categories.json), or a
    {"id": "name"} object."""
    if isinstance(data, dict):
        try:
            return _by_id([(int(k), str(v)) for k, v in data.items()], path)
        except ValueError:
            raise UserError(f"--class-names {path}: JSON object keys must be class ids.") from None
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return list(data)
    if isinstance(data, list) and all(_is_category(x) for x in data):
        return _by_id([(int(x["id"]), str(x["name"])) for x in data], path)
    raise UserError(
        f"--class-names {path}: JSON must be a list of names, a list of objects with 'id' and "
        "'name' (like iNaturalist's categories.json), or an object of id -> name."
    )


def _from_lines(lines: list[str], path: Path) -> list[str]:
    """One name per line, or `name id` per line (Places365's categories_places365.txt:
    `/a/airfield 0`) when every line ends in an integer id."""
    split = [line.rsplit(maxsplit=1) for line in lines]
    if all(len(p) == 2 and p[1].isdigit() for p in split):
        return [_category(n) for n in _by_id([(int(i), n) for n, i in split], path)]
    return [_category(line) for line in lines]


def read_names_file(path: Path) -> GivenNames:
    """The class names in `path`, in label order (formats: see _from_lines and _from_json)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read --class-names {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            names = _from_json(json.loads(text), path)
        except json.JSONDecodeError as exc:
            raise UserError(f"--class-names {path} is not valid JSON ({exc}).") from None
    else:
        names = _from_lines([line.strip() for line in text.splitlines() if line.strip()], path)
    if not names or any(not n for n in names):
        raise UserError(f"--class-names {path} has no names or an empty name.")
    return GivenNames(names, path)


def choose_names(given: GivenNames | None, names: list[str], source: str) -> tuple[list[str], str]:
    """(names, where they came from): the --class-names file when given, checked against the
    dataset's class count, else the source's own names."""
    if given is None:
        return names, source
    if len(given.names) != len(names):
        raise UserError(
            f"--class-names {given.path} has {len(given.names)} names but the dataset has "
            f"{len(names)} classes; give one name per class, in label order. Nothing was written."
        )
    return list(given.names), given.source


def imagenet_class_names() -> list[str] | None:
    """The 1,000 standard ImageNet class names in label order 0..999 (the order ImageNet-LT's
    lists use), as open_clip ships them; None when open_clip is not installed."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError:
        return None
    return list(IMAGENET_CLASSNAMES)
