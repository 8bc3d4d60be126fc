"""Frozen-base checkpoints: what a checkpoint of a lightweight-tuned run stores, and how its
tensors go back onto a model rebuilt from the base weights.

A model built with a base identity (`lwr_base`: name and sha256 of the pretrained file) and a
tuning method that freezes the base (`lwr_tuned`: the keys outside the head that train; see
lwrcli.models.tuning) is stored as those keys plus the whole head. Everything else is stored
whole. Models here are unwrapped (no DDP / torch.compile wrappers).
"""

from __future__ import annotations

from typing import Any

import torch

from lwrcli.errors import UserError


def _head_prefix(classifier_key: str) -> str:
    return classifier_key.rpartition(".")[0] + "."


def stored_state(
    model: torch.nn.Module, classifier_key: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors a checkpoint stores and the metadata that says which (see
    checkpoint_payload)."""
    state = model.state_dict()
    base = getattr(model, "lwr_base", None)
    tuned = getattr(model, "lwr_tuned", None)
    if base is None or tuned is None:
        return state, {}
    keep = set(tuned)
    head = _head_prefix(classifier_key)
    partial = {k: v for k, v in state.items() if k in keep or k.startswith(head)}
    meta = {
        "stored": "trainable",
        "tuning": str(getattr(model, "lwr_tuning", "")),
        "base_name": base["name"],
        "base_sha256": base["sha256"],
    }
    return partial, meta


def restore_weights(model: torch.nn.Module, ckpt: Any) -> None:
    """Load a checkpoint's tensors into a model built from its config.

    A whole-model checkpoint loads strictly. A frozen-base checkpoint (`stored: trainable`)
    needs the model built on the same base: the base's sha256 must equal the recorded one
    (UserError naming both otherwise), and the stored keys must be exactly the model's
    trainable keys plus its head (RuntimeError otherwise, like load_state_dict)."""
    raw = model
    if ckpt.meta.get("stored") != "trainable":
        raw.load_state_dict(ckpt.state)
        return
    want, name = ckpt.meta.get("base_sha256", ""), ckpt.meta.get("base_name", "?")
    base = getattr(raw, "lwr_base", None)
    if base is None:
        raise UserError(
            f"Checkpoint {ckpt.path} holds only the trained tensors of a run on the frozen base "
            f"weights {name} (sha256 {want}), but the model it describes was built without "
            "base weights. Set model.pretrained to that file (or model.weights to its name)."
        )
    if base["sha256"] != want:
        raise UserError(
            f"Checkpoint {ckpt.path} was trained on the frozen base weights {name} with sha256 "
            f"{want}, but the base weights found, {base['name']}, have sha256 "
            f"{base['sha256']}. The checkpoint stores only the tensors that trained, so it "
            "needs exactly its own base: put the original file back at that path (or point "
            "model.pretrained at it with --set)."
        )
    tuned = set(getattr(raw, "lwr_tuned", None) or ())
    head = _head_prefix(ckpt.classifier_key)
    expected = {k for k in raw.state_dict() if k in tuned or k.startswith(head)}
    missing = sorted(expected - ckpt.state.keys())
    unexpected = sorted(ckpt.state.keys() - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"Error(s) in loading the trained tensors: missing keys {missing[:4]}, unexpected "
            f"keys {unexpected[:4]} (a different model.tuning or tuning_dim?)"
        )
    raw.load_state_dict(ckpt.state, strict=False)
