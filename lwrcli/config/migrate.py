"""Old config keys -> new ones, in one table: run folders, checkpoints, sweep files and
`--set` overrides written before a key moved keep working.

Applied to every config mapping before it is validated (config.yaml, checkpoint metadata,
preset and config files) and to each `--set` key. A config in the current format passes
through unchanged, so migrating twice is migrating once.

Version 2 (issue 23) gave each method its own section: a loss's settings lost their prefix
(`loss.focal_gamma` -> `loss.gamma`), the head and the model variant became slots
(`model.head`, `model.variant`), and the training tricks became top-level sections
(`max_norm`, `mixing`, `label_smoothing`).
"""

from __future__ import annotations

import copy
from typing import Any

from lwrcli.errors import UserError

# old dotted key -> new dotted key, when the config's loss is the one named (None: always).
# A key whose condition does not hold belonged to a loss the run did not use: it is dropped.
RENAMES: list[tuple[str, str, str | None]] = [
    ("loss.focal_gamma", "loss.gamma", "focal"),
    ("loss.ldam_max_m", "loss.max_m", "ldam"),
    ("loss.ldam_s", "loss.s", "ldam"),
    ("loss.la_tau", "loss.tau", "la"),
    ("loss.ib_start_epoch", "loss.start_epoch", "ib"),
    ("loss.ib_alpha", "loss.alpha", "ib"),
    ("loss.ib_epsilon", "loss.epsilon", "ib"),
    ("loss.ib_class_weight", "loss.class_weight", "ib"),
    ("loss.seql_gamma", "loss.gamma", "seql"),
    ("loss.seql_lambda", "loss.threshold", "seql"),
    ("loss.label_smoothing", "label_smoothing.epsilon", None),
    ("loss.label_smoothing_tail", "label_smoothing.tail", None),
    ("loss.label_smoothing_shape", "label_smoothing.shape", None),
    ("loss.label_smoothing_power", "label_smoothing.power", None),
    ("optim.max_norm", "max_norm.radius", None),
    ("optim.max_norm_mode", "max_norm.mode", None),
    ("data.mixup_alpha", "mixing.mixup_alpha", None),
    ("data.cutmix_alpha", "mixing.cutmix_alpha", None),
    ("data.mix_prob", "mixing.prob", None),
    ("data.mix_switch_prob", "mixing.switch_prob", None),
    ("model.cosine_scale", "model.head.scale", "head:cosine"),
    ("model.etf_feature_bn", "model.head.feature_bn", "head:etf"),
]
# Boolean switches that became a slot's name: old key -> (slot key, name if true, if false).
SWITCHES: dict[str, tuple[str, str, str]] = {
    "model.cosine_classifier": ("model.head.name", "cosine", "linear"),
    "model.etf_classifier": ("model.head.name", "etf", "linear"),
    "model.bbn": ("model.variant.name", "bbn", "plain"),
}
OLD_KEYS = {old for old, _, _ in RENAMES} | set(SWITCHES)


def _pop(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return False, None
    if leaf not in node:
        return False, None
    return True, node.pop(leaf)


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A config mapping in any earlier format -> the current format (a new mapping)."""
    if not isinstance(data, dict) or not _has_old_keys(data):
        return data
    data = copy.deepcopy(data)
    model = data.get("model")
    if isinstance(model, dict) and model.get("cosine_classifier") and model.get("etf_classifier"):
        raise UserError(
            "model.cosine_classifier and model.etf_classifier are two different heads: the ETF "
            "head already outputs cosines (of normalised features with fixed unit rows); keep "
            "one (today: model.head.name=cosine or etf)."
        )
    switched: dict[str, str] = {}
    for old, (new, if_true, if_false) in SWITCHES.items():
        found, value = _pop(data, old)
        if found and (value or new not in switched):  # etf or cosine: whichever is on
            switched[new] = if_true if value else if_false
    for new, name in switched.items():
        _put(data, new, name)
    head = _get(data, "model.head.name") or "linear"
    loss = _get(data, "loss.name") or "ce"
    for old, new, when in RENAMES:
        found, value = _pop(data, old)
        if not found:
            continue
        if when is None or when == loss or when == f"head:{head}":
            _put(data, new, value)
    return data


def _has_old_keys(data: dict[str, Any]) -> bool:
    return any(_get(data, key) is not None or _present(data, key) for key in OLD_KEYS)


def _present(data: dict[str, Any], dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    node = _get(data, ".".join(parents)) if parents else data
    return isinstance(node, dict) and leaf in node


def migrate_override(
    path: list[str], value: Any, data: dict[str, Any] | None = None
) -> tuple[list[str] | None, Any, str | None]:
    """One `--set` key: (new path, new value, a note for the user, or None if unchanged).
    Given the config `data` it applies to, an old key of another loss than the config's is
    left out (path None), as `migrate` leaves it out of a file: a sweep's `--set` of one
    loss's setting does not break its runs of other losses."""
    dotted = ".".join(path)
    if dotted in SWITCHES:
        new, if_true, if_false = SWITCHES[dotted]
        name = if_true if value is True else if_false if value is False else value
        return new.split("."), name, f"--set {dotted} is now {new}={name}"
    for old, new, when in RENAMES:
        if dotted != old:
            continue
        if data is not None and when is not None and not when.startswith("head:"):
            loss = _get(data, "loss.name") or "ce"
            if loss != when:
                return (
                    None,
                    value,
                    (
                        f"--set {old} applies to loss.name={when} only; this config's loss is "
                        f"{loss}: left out"
                    ),
                )
        return new.split("."), value, f"--set {old} is now {new}"
    return path, value, None
