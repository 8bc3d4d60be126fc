"""Config files: the shipped presets folder, YAML read safely, and recipes that name a base.

A preset (or any config file) holds only what differs from the defaults, or from the recipe
it names as `_base_` (mmengine's idea): `_base_: cifar100-lt-ir100-bs` then `lwr: {enabled:
true}` is BS + LWR. Sections merge key by key; a slot (`loss`, `model.head`, `model.variant`)
that names another method replaces the base's slot whole, since the old method's settings
would not fit the new one; a value (a number, a list, a mapping such as `reference`) replaces
the base's value whole.

`difference(full, base)` is the inverse: the recipe that, merged onto `base`, gives `full`
(tools/make_presets.py writes the shipped presets with it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lwrcli.config.migrate import migrate
from lwrcli.config.schema import TrainConfig
from lwrcli.config.slots import SLOT_DEFAULTS, SLOT_KEYS, slot_class, trick_sections, validate_slot
from lwrcli.errors import UserError, did_you_mean

BASE_KEY = "_base_"
# Where each slot lives: ('model', 'head') -> 'head'.
SLOTS: dict[tuple[str, ...], str] = {tuple(where.split(".")): s for s, where in SLOT_KEYS.items()}
SLOT_PATHS = tuple(SLOTS)


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


# The schema one level down: which keys hold sections (merged key by key) and which values.
_UNKNOWN = None  # below a key the schema does not know: mappings merge, as sections do


def _below(
    path: tuple[str, ...], model: type[BaseModel] | None, node: Any
) -> tuple[bool, type[BaseModel] | None]:
    """(whether the key at `path`, below section class `model`, holds a section, and that
    section's class when known). A slot's class follows the `name` in `node`, its mapping."""
    key = path[-1]
    slot = SLOTS.get(path)
    if slot is not None:
        name = node.get("name") if isinstance(node, dict) else None
        try:
            return True, slot_class(slot, name if isinstance(name, str) else SLOT_DEFAULTS[slot])
        except ValueError:
            return True, _UNKNOWN  # validation names the unknown method
    if model is None:
        return True, _UNKNOWN
    if model is TrainConfig and key in trick_sections():
        return True, trick_sections()[key]
    field = model.model_fields.get(key)
    if field is None:
        return True, _UNKNOWN  # validation names the unknown key
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True, annotation
    return False, None


def _replaces_slot(path: tuple[str, ...], old: Any, new: Any) -> bool:
    """A slot mapping that names another method than the one it is merged onto."""
    return (
        path in SLOTS
        and isinstance(old, dict)
        and isinstance(new, dict)
        and "name" in new
        and new["name"] != old.get("name", SLOT_DEFAULTS[SLOTS[path]])
    )


def merge(
    base: dict[str, Any],
    over: dict[str, Any],
    path: tuple[str, ...] = (),
    model: type[BaseModel] | None = TrainConfig,
) -> dict[str, Any]:
    """`base` updated by `over`, section by section (new dicts; neither input changes).

    A slot that names another method, and every value (a list, a mapping such as
    `reference`), replace the base's whole."""
    out = dict(base)
    for key, value in over.items():
        here = (*path, key)
        old = out.get(key)
        if not (isinstance(old, dict) and isinstance(value, dict)):
            out[key] = value
            continue
        section, child = _below(here, model, value if "name" in value else old)
        if section and not _replaces_slot(here, old, value):
            out[key] = merge(old, value, here, child)
        else:
            out[key] = value
    return out


def difference(
    full: dict[str, Any],
    base: dict[str, Any],
    path: tuple[str, ...] = (),
    model: type[BaseModel] | None = TrainConfig,
) -> dict[str, Any]:
    """The recipe that `merge(base, recipe)` turns into `full` (both complete configs, as
    `model_dump(mode="json")` writes them): the keys whose values differ. A slot written at
    all names its method; one that names another method than `base`'s holds what differs from
    that method's defaults, since it replaces the base's slot whole."""
    out: dict[str, Any] = {}
    for key, value in full.items():
        here = (*path, key)
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            section, child = _below(here, model, value)
            if here in SLOTS and "name" in value:
                renamed = _replaces_slot(here, old, value)
                if renamed:
                    fresh = validate_slot(SLOTS[here], {"name": value["name"]})
                    old = fresh.model_dump(mode="json")
                inner = difference(value, old, here, child)
                if inner or renamed:
                    out[key] = {"name": value["name"], **inner}
                continue
            if section:
                inner = difference(value, old, here, child)
                if inner:
                    out[key] = inner
                continue
        if key not in base or value != old:
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


class _RecipeDumper(yaml.SafeDumper):
    """Sections as blocks; lists and value mappings (`reference`) on one line each."""


class _Flow(dict):  # type: ignore[type-arg]
    """A value mapping, written on one line."""


def _flow_seq(dumper: yaml.SafeDumper, data: Any) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(data), flow_style=True)


def _flow_map(dumper: yaml.SafeDumper, data: Any) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", dict(data), flow_style=True)


_RecipeDumper.add_representer(list, _flow_seq)
_RecipeDumper.add_representer(tuple, _flow_seq)
_RecipeDumper.add_representer(_Flow, _flow_map)


def _mark_values(
    data: dict[str, Any], path: tuple[str, ...] = (), model: type[BaseModel] | None = TrainConfig
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        here = (*path, key)
        if isinstance(value, dict) and key != BASE_KEY:
            section, child = _below(here, model, value)
            value = _mark_values(value, here, child) if section else _Flow(value)
        out[key] = value
    return out


def recipe_to_yaml(data: dict[str, Any], width: int = 100) -> str:
    """A recipe (or any config mapping) as YAML, in its own key order: sections as blocks,
    lists and value mappings in flow style ([0.485, 0.456, 0.406]), so recipes stay short."""
    return yaml.dump(
        _mark_values(data), Dumper=_RecipeDumper, sort_keys=False, width=width, allow_unicode=True
    )
