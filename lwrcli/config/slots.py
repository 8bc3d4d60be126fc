"""Where a method's config section meets the config, through the registry alone.

A *slot* holds one of several methods, chosen by `name`: `loss`, `model.head`,
`model.variant`. Its value is validated by the chosen method's own section class, so
`--set loss.name=ib` accepts IB's fields and refuses focal's. A *trick* (MaxNorm, EMA,
mixing, ...) is a top-level section of its own (`ema:`), present in every config with its
defaults. Both are found in `lwrcli.registry.METHODS`, filled by lwrcli.methods and plugins.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from lwrcli.errors import did_you_mean
from lwrcli.registry import METHODS

# Where each slot lives in the config, and the method it holds when nothing is said.
SLOT_KEYS = {"loss": "loss", "head": "model.head", "variant": "model.variant"}
SLOT_DEFAULTS = {"loss": "ce", "head": "linear", "variant": "plain"}


def methods_of(slot: str) -> dict[str, Any]:
    """name -> Method for one slot (`loss`, `head`, `variant`) or for `trick`."""
    return {m.name: m for m in METHODS.values() if m.slot == slot}


def slot_method(slot: str, name: str) -> Any:
    """The method registered under `name` in `slot`; ValueError naming the choices."""
    found = methods_of(slot)
    if name not in found:
        raise ValueError(
            f"{SLOT_KEYS[slot]}.name={name!r} is not a registered {slot}."
            f"{did_you_mean(name, found)} Choices: {', '.join(found)} (a {slot} from a plugin "
            "needs the plugin's package installed: docs/plugins.md)"
        )
    return found[name]


def validate_slot(slot: str, value: Any) -> BaseModel:
    """A slot's value (a mapping with `name`, or a section already built) -> its section."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ValueError(f"{SLOT_KEYS[slot]} must be a mapping with a `name`, got {value!r}")
    name = value.get("name", SLOT_DEFAULTS[slot])
    if not isinstance(name, str):
        raise ValueError(f"{SLOT_KEYS[slot]}.name must be a string, got {name!r}")
    return slot_method(slot, name).config.model_validate({**value, "name": name})


def slot_class(slot: str, name: str) -> type[BaseModel]:
    return slot_method(slot, name).config


def trick_sections() -> dict[str, type[BaseModel]]:
    """Top-level key -> section class of every registered training trick, in registry order."""
    return {m.key: m.config for m in METHODS.values() if m.slot == "trick"}
