"""Models: families (built-in, torchvision, timm, CLIP), heads and their initialisation,
pretrained weights, and the one entry the build layer calls (`build_model`).

The heads and the built-in networks import eagerly (torch only); the factory and what it
reaches (torchvision, timm, open_clip, the hub) only when one of its names is first used, so
validating a config or importing a method never loads a model library.
"""

import importlib
from typing import Any

from lwrcli.models.builtin import ResNetCifar, SmallCNN, norm_layer
from lwrcli.models.heads import (
    CosineLinear,
    LWSHead,
    classifier_key,
    classifier_keys,
    get_classifier,
    get_classifiers,
    head_path,
    head_paths,
    make_classifier,
    set_head,
)

_LAZY = {
    **dict.fromkeys(
        (
            "CLASSIFIER_KEY",
            "MODELS",
            "build_model",
            "count_parameters",
            "fetch_weights",
            "freeze",
            "is_convolutional",
            "is_convolutional_name",
            "list_models",
            "model_data_defaults",
            "models_table",
        ),
        "lwrcli.models.factory",
    ),
    "base_identity": "lwrcli.models.factory",
    "base_of": "lwrcli.models.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lwrcli.models' has no attribute {name!r}")


__all__ = [
    "CosineLinear",
    "LWSHead",
    "ResNetCifar",
    "SmallCNN",
    "classifier_key",
    "classifier_keys",
    "get_classifier",
    "get_classifiers",
    "head_path",
    "head_paths",
    "make_classifier",
    "norm_layer",
    "set_head",
    *_LAZY,
]
