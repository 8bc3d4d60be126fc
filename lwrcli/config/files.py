"""Config files: the shipped presets folder, YAML read safely, and recipes that name a base.

A preset (or any config file) holds only what differs from the defaults, or from the recipe
it names as `_base_` (mmengine's idea): `_base_: cifar100-lt-ir100-bs` then `lwr: {enabled:
true}` is BS + LWR. Mappings merge key by key; a slot (`loss`, `model.head`, `model.variant`)
that names another method replaces the base's slot whole, since the old method's settings
would not fit the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lwrcli.config.migrate import migrate
from lwrcli.errors import UserError, did_you_mean

BASE_KEY = "_base_"
SLOT_PATHS = (("loss",), ("model", "head"), ("model", "variant"))


def presets_dir() -> Path:
    """The shipped presets: inside the package when installed, beside it in a checkout."""
    env = os.environ.get("LWR_PRESETS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[1]  # the package folder
    for candidate in (here / "presets", here.parent / "presets"):
        if candidate.is_dir():
            return candidate
    raise UserError("The presets folder is missing from this installation; reinstall lwrcli.")


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        names = list_presets()
        raise UserError(
            f"Unknown preset '{name}'.{did_you_mean(name, names)} "
            f"Run 'lwr presets list' to see the {len(names)} shipped presets."
        )
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"Cannot read config file {path}: {exc.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"Config file {path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of keys to values.")
    return data


def merge(base: dict[str, Any], over: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """`base` updated by `over`, mapping by mapping (new dicts; neither input changes)."""
    out = dict(base)
    for key, value in over.items():
        here = (*path, key)
        old = out.get(key)
        replaces_slot = (
            here in SLOT_PATHS
            and isinstance(old, dict)
            and isinstance(value, dict)
            and "name" in value
            and value["name"] != old.get("name")
        )
        if isinstance(old, dict) and isinstance(value, dict) and not replaces_slot:
            out[key] = merge(old, value, here)
        else:
            out[key] = value
    return out


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its `_base_` chain merged in (bases first), in the current format.

    `_base_` names a shipped preset, or a YAML file relative to the file that names it."""
    path = Path(path)
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"Config files name each other as _base_ in a circle: {chain}.")
    data = migrate(read_yaml(path))
    base_ref = data.pop(BASE_KEY, None)
    if base_ref is None:
        return data
    if not isinstance(base_ref, str) or not base_ref:
        raise UserError(f"{path}: _base_ must name one preset or file, got {base_ref!r}.")
    relative = path.parent / base_ref
    base_path = relative if relative.suffix in (".yaml", ".yml") else preset_path(base_ref)
    if not base_path.is_file():
        raise UserError(f"{path}: _base_ {base_ref} does not exist ({base_path}).")
    return merge(read_recipe(base_path, (*seen, path.resolve())), data)
