"""From a preset or file plus `--set key=value` overrides to one validated `TrainConfig`,
with errors that name the key, the allowed values and the closest valid key.

`--set` keys are checked against the schema as they are applied, including a slot's
own fields for the method it names (`--set loss.name=focal --set loss.gamma=2`); a key that
moved (lwrcli.config.migrate) is applied at its new place with a note.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from lwrcli.config.files import preset_path, read_recipe
from lwrcli.config.migrate import migrate, migrate_override
from lwrcli.config.schema import TrainConfig
from lwrcli.config.sections import SlotSection
from lwrcli.config.slots import SLOT_DEFAULTS, slot_class, trick_sections
from lwrcli.errors import UserError, did_you_mean

# A slot's field -> the slot it holds ({'loss': 'loss', 'head': 'head', ...} by base class).
_SLOT_OF_BASE = {"LossSection": "loss", "HeadSection": "head", "VariantSection": "variant"}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML, so 0.1, true, [1, 2] all work)."""
    if "=" not in item:
        raise UserError(f"--set expects key=value (for example lwr.theta=0.4), got '{item}'.")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set has an empty key in '{item}'; use dotted keys like optim.lr=0.1.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _slot_of(annotation: Any) -> str | None:
    if isinstance(annotation, type) and issubclass(annotation, SlotSection):
        for base in annotation.__mro__:
            if base.__name__ in _SLOT_OF_BASE:
                return _SLOT_OF_BASE[base.__name__]
    return None


def child_model(model: type[BaseModel], key: str, node: dict[str, Any]) -> type[BaseModel] | None:
    """The section class under `key` of `model`, given the config values `node` there (a
    slot's class follows the `name` it holds); None for a plain value. KeyError if unknown."""
    if model is TrainConfig and key in trick_sections():
        return trick_sections()[key]
    if key not in model.model_fields:
        raise KeyError(key)
    annotation = model.model_fields[key].annotation
    slot = _slot_of(annotation)
    if slot is not None:
        value = node.get(key) if isinstance(node, dict) else None
        name = value.get("name") if isinstance(value, dict) else None
        try:
            return slot_class(slot, name or SLOT_DEFAULTS[slot])
        except ValueError as exc:
            raise UserError(f"Invalid config: {exc}.") from None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def valid_keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = list(model.model_fields)
    if model is TrainConfig:
        keys += list(trick_sections())
    return [f"{prefix}.{k}" if prefix else k for k in keys]


def apply_override(
    data: dict[str, Any], path: list[str], value: Any, log: Callable[[str], None] = _stderr
) -> None:
    """Set data[path] = value, checking every key against the config schema on the way."""
    moved, value, note = migrate_override(path, value, data)
    if note:
        log(f"Note: {note}" + (" (the old key still works)." if moved is not None else "."))
    if moved is None:
        return
    path = moved
    model: type[BaseModel] | None = TrainConfig
    node = data
    for depth, key in enumerate(path):
        dotted = ".".join(path[: depth + 1])
        parent = model
        if model is not None:
            try:
                model = child_model(model, key, node)
            except KeyError:
                valid = valid_keys(model, ".".join(path[:depth]))
                owner = _owner(model)
                raise UserError(
                    f"Unknown config key '{dotted}'{owner}.{did_you_mean(dotted, valid)} "
                    f"Valid keys here: {', '.join(valid)}."
                ) from None
        if depth == len(path) - 1:
            if key == "name" and parent is not None and issubclass(parent, SlotSection):
                _switch_slot(node, parent, value, ".".join(path[:depth]), log)
            if _is_list_field(parent, key) and not isinstance(value, (list, dict, type(None))):
                value = [value]  # one value for a list: --set log.to=tensorboard
            node[key] = value
            return
        child = node.get(key)
        if not isinstance(child, dict):
            if model is None:
                raise UserError(f"Config key '{dotted}' is not a section; cannot set below it.")
            child = {}
            node[key] = child
        node = child


def _is_list_field(model: type[BaseModel] | None, key: str) -> bool:
    """Whether `model.key` holds a list (list[...] or list[...] | None)."""
    field = model.model_fields.get(key) if model is not None else None
    if field is None:
        return False
    annotation = field.annotation
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    return any(get_origin(a) is list or a is list for a in (annotation, *options))


def _owner(model: type[BaseModel]) -> str:
    """' (a setting of loss 'bs')' for a slot's section, so the reason is plain."""
    if issubclass(model, SlotSection):
        name = model.model_fields["name"].default
        return f" (not a setting of '{name}')" if name else ""
    return ""


def _switch_slot(
    node: dict[str, Any],
    section: type[BaseModel],
    name: Any,
    where: str,
    log: Callable[[str], None],
) -> None:
    """A slot changes method: settings the new method does not have are left out, with a
    note (the recipe's settings for the old method do not apply to the new one)."""
    if not isinstance(name, str) or node.get("name", name) == name:
        return
    try:
        slot = _slot_of(section)
        assert slot is not None
        new = slot_class(slot, name)
    except ValueError:
        return  # validation names the unknown method
    dropped = [k for k in node if k != "name" and k not in new.model_fields]
    for key in dropped:
        node.pop(key)
    if dropped:
        log(
            f"Note: {where}.name={name} leaves out the settings of "
            f"'{node.get('name')}': {', '.join(dropped)}."
        )


# ---------------------------------------------------------------------------------------------
# Validation with readable errors


def _format_errors(exc: ValidationError, source: str, data: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        if err["type"] == "extra_forbidden":
            model: type[BaseModel] | None = TrainConfig
            node: Any = data
            for key in loc[:-1]:
                try:
                    model = child_model(model, key, node) if model is not None else None
                except (KeyError, UserError):
                    model = None
                node = node.get(key, {}) if isinstance(node, dict) else {}
            valid = valid_keys(model, ".".join(loc[:-1])) if model is not None else []
            owner = _owner(model) if model is not None else ""
            parts.append(f"unknown key '{dotted}'{owner}.{did_you_mean(dotted, valid)}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"'{dotted or 'config'}': {msg}{shown}")
    return f"Invalid config from {source}: " + "; ".join(parts) + "."


def validate_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """A config mapping in any format lwr has written -> TrainConfig (UserError if invalid)."""
    data = migrate(data)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_errors(exc, source, data)) from None


def load_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = _stderr,
) -> TrainConfig:
    """Preset or YAML file (with its `_base_` chain), then `--set` overrides, validated once.
    A slot's `name` is applied before the rest, so its own settings find their method."""
    if (preset is None) == (config_file is None):
        raise UserError("Give exactly one of --preset NAME or --config FILE.")
    if preset is not None:
        path = preset_path(preset)
        source = f"preset '{preset}'"
    else:
        assert config_file is not None
        path = config_file
        source = str(config_file)
    data = read_recipe(path)
    parsed = [parse_override(item) for item in overrides or []]
    parsed.sort(key=lambda kv: (migrate_override(*kv)[0] or [""])[-1] != "name")  # stable
    for keys, value in parsed:
        apply_override(data, keys, value, log)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return validate_config(data, source)


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
