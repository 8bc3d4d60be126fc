"""Models: families (built-in, torchvision, timm, CLIP), heads and their initialisation,
pretrained weights, and the one entry the build layer calls (`build_model`)."""

from lwrcli.models.builtin import ResNetCifar, SmallCNN, norm_layer
from lwrcli.models.factory import (
    CLASSIFIER_KEY,
    MODELS,
    build_model,
    count_parameters,
    fetch_weights,
    freeze,
    is_convolutional,
    is_convolutional_name,
    list_models,
    model_data_defaults,
    models_table,
)
from lwrcli.models.heads import (
    CosineLinear,
    ETFHead,
    LWSHead,
    classifier_key,
    get_classifier,
    head_path,
    make_classifier,
    set_head,
    simplex_etf,
)
from lwrcli.models.weights import base_identity, base_of

__all__ = [
    "CLASSIFIER_KEY",
    "MODELS",
    "CosineLinear",
    "ETFHead",
    "LWSHead",
    "ResNetCifar",
    "SmallCNN",
    "base_identity",
    "base_of",
    "build_model",
    "classifier_key",
    "count_parameters",
    "fetch_weights",
    "freeze",
    "get_classifier",
    "head_path",
    "is_convolutional",
    "is_convolutional_name",
    "list_models",
    "make_classifier",
    "model_data_defaults",
    "models_table",
    "norm_layer",
    "set_head",
    "simplex_etf",
]
