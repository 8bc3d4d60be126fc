"""Building a model from its config: the family registry (lwr's own architectures,
torchvision, timm), pretrained weights, frozen parts, and the listings `lwr models` shows.

`build_model` is the one entry the build layer calls; every model it returns records where its
classifier lives (`model.lwr_head`, read through `lwrcli.models.heads`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from rich.table import Table
from torch import nn

from lwrcli.config import ModelConfig
from lwrcli.errors import UserError, did_you_mean
from lwrcli.models import families
from lwrcli.models.builtin import ResNetCifar, SmallCNN
from lwrcli.models.heads import make_classifier, set_submodule
from lwrcli.models.tuning import apply_tuning
from lwrcli.models.weights import file_sha256, load_pretrained

# Deprecated: the head of the built-in models only. Use classifier_key(model).
CLASSIFIER_KEY = "fc.weight"


def _external(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A torchvision/timm model: build it with its default head, then swap that head for one
    sized to the dataset (same random-number use as before `torchvision:` names existed, so
    the ResNet-50 recipes initialise bit for bit as they did)."""
    model = families.create_backbone(cfg.name)
    path = families.find_head(model, cfg.name)
    old = model.get_submodule(path)
    assert isinstance(old, nn.Linear)  # find_head guarantees it
    set_submodule(
        model,
        path,
        make_classifier(old.in_features, num_classes, cfg.cosine_classifier, cfg.cosine_scale),
    )
    model.lwr_head = path
    return model


def _own(build: Callable[[ModelConfig, int], nn.Module]) -> Callable[[ModelConfig, int], nn.Module]:
    def wrapped(cfg: ModelConfig, num_classes: int) -> nn.Module:
        model = build(cfg, num_classes)
        model.lwr_head = "fc"
        return model

    return wrapped


# The built-in names; any other valid name (torchvision:, timm:) goes through _external.
MODELS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "small_cnn": _own(lambda cfg, c: SmallCNN(c, cfg.width, cfg.cosine_classifier, cfg.norm)),
    "resnet32": _own(lambda cfg, c: ResNetCifar(c, 5, cfg.cosine_classifier, cfg.norm)),
    **{name: _external for name in families.ALIASES},
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _clip(
    cfg: ModelConfig, num_classes: int, class_names: list[str] | None, log: Callable[[str], None]
) -> nn.Module:
    """A CLIP image tower with lwr's head; the head starts from the class names' text
    embeddings when `head_init: text` (the text tower is dropped afterwards)."""
    from lwrcli.models import clip

    arch = cfg.name.partition(":")[2]
    whole = clip.create_clip(arch, cfg.weights)
    if cfg.pretrained is not None:
        log(load_pretrained(whole, cfg.pretrained, head="head").message())
    model = clip.build_classifier(whole, num_classes, cfg.cosine_classifier, cfg.cosine_scale)
    if cfg.head_init == "text":
        if class_names is None or len(class_names) != num_classes:
            raise UserError("model.head_init=text needs the dataset's class names (one per class).")
        rows = clip.encode_class_names(
            whole, clip.tokenizer_for(arch), class_names, cfg.text_templates
        )
        with torch.no_grad():
            model.head.weight.copy_(rows)
    return model


def build_model(
    cfg: ModelConfig,
    num_classes: int,
    log: Callable[[str], None] = _stderr,
    class_names: list[str] | None = None,
) -> nn.Module:
    """The model for `cfg` with a `num_classes` head, pretrained weights loaded from a local
    file and `cfg.freeze` applied. `log` receives one line about left-out pretrained keys;
    `class_names` feed text-initialised heads."""
    if cfg.pretrained_required and cfg.pretrained is None:
        raise UserError(
            f"This recipe fine-tunes a pretrained {cfg.name}: pass "
            "--set model.pretrained=/path/to/weights (.safetensors or a torchvision/timm .pth "
            "state dict); nothing is downloaded."
        )
    if num_classes < 2:
        raise UserError(f"A classifier needs at least 2 classes, the dataset has {num_classes}.")
    if cfg.name.startswith("clip:"):
        model = _clip(cfg, num_classes, class_names, log)
    else:
        model = MODELS.get(cfg.name, _external)(cfg, num_classes)
    if cfg.pretrained is not None and not cfg.name.startswith("clip:"):
        result = load_pretrained(model, cfg.pretrained, head=model.lwr_head)
        log(result.message())
    if cfg.freeze:
        freeze(model, cfg.freeze)
    model.lwr_base = base_identity(cfg)
    return apply_tuning(model, cfg, num_classes)


def base_identity(cfg: ModelConfig) -> dict[str, str] | None:
    """Name and sha256 of the pretrained base a frozen-base run (tuning other than `full`)
    refers to: its checkpoints store only what trains and are refused over another base.
    None when everything trains or the base is random (checkpoints then hold the whole
    model)."""
    if cfg.tuning == "full" or cfg.pretrained is None:
        return None
    return {"name": str(cfg.pretrained), "sha256": file_sha256(cfg.pretrained)}


def freeze(model: nn.Module, prefixes: list[str]) -> int:
    """requires_grad=False for parameters under the module paths `prefixes` (whole path
    components: 'blocks.1' freezes blocks.1.* but not blocks.10.*). Returns how many."""
    named = list(model.named_parameters())
    frozen = 0
    for prefix in prefixes:
        p = prefix.rstrip(".")
        hits = [t for n, t in named if n == p or n.startswith(p + ".")]
        if not hits:
            top = [n for n, _ in model.named_children()]
            raise UserError(
                f"model.freeze: no parameter of {type(model).__name__} is under '{prefix}'."
                f"{did_you_mean(p, top)} Top-level modules: {', '.join(top[:12])}"
                + (", ..." if len(top) > 12 else "")
                + "; deeper paths use dots (e.g. 'layer1.0')."
            )
        for t in hits:
            frozen += t.numel() if t.requires_grad else 0
            t.requires_grad_(False)
    return frozen


def is_convolutional(model: nn.Module) -> bool:
    """Whether convolutions do the model's work (ResNets, ConvNeXt, EfficientNet, ...), so the
    channels_last memory format pays; transformers (ViT, Swin: one patch-embedding conv, then
    attention and matmuls) are left in the default format."""
    convs = 0
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower():
            return False
        convs += isinstance(m, nn.Conv2d)
    return convs >= 2


def is_convolutional_name(name: str) -> bool:
    """is_convolutional for a config's model name, built on the meta device (no weights)."""
    if name in families.OWN:
        return True  # resnet32, small_cnn
    if name.startswith("clip:"):
        from lwrcli.models.clip import is_convolutional_arch

        return is_convolutional_arch(name.partition(":")[2])
    return is_convolutional(families.meta_backbone(name))


def count_parameters(model: nn.Module, trainable: bool = False) -> int:
    """Parameter elements of `model`; only those that train (requires_grad) when `trainable`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def list_models(pattern: str | None = None) -> list[families.ModelInfo]:
    """Every buildable model name matching `pattern` (see families.list_backbones)."""
    return families.list_backbones(
        pattern, build_own=lambda name: build_model(ModelConfig(name=name), 1000)
    )


model_data_defaults = families.model_data_defaults


def models_table(infos: list[families.ModelInfo], pattern: str | None = None) -> Table:
    """`lwr models list`: name, family, parameters, head path."""
    table = Table(title=f"{len(infos)} models" + (f" matching '{pattern}'" if pattern else ""))
    for col in ("model.name", "family", "params (1000 classes)", "head"):
        table.add_column(col, justify="right" if col.startswith("params") else "left")
    for info in infos:
        params = f"{info.params:,}" if info.params is not None else "–"
        head = info.head or ("–" if info.params is None else "not Linear: unsupported")
        table.add_row(info.name, info.family, params, head)
    if any(info.params is None for info in infos):
        table.caption = "timm parameter counts appear when at most 60 timm names match."
    return table
