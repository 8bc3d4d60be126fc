"""Building a model from its config: the family registry (lwr's own architectures,
torchvision, timm, clip), pretrained weights (by name or a local file), frozen parts, and the
listings `lwr models` shows.

`build_model` is the one entry the build layer calls; every model it returns records where its
classifier lives (`model.lwr_head`, read through `lwrcli.models.heads`) and which pretrained
file it started from (`model.lwr_base`, see lwrcli.models.weights.base_of).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

from lwrcli.config import ModelConfig
from lwrcli.config.slots import slot_method
from lwrcli.errors import UserError, did_you_mean
from lwrcli.models import families, hub
from lwrcli.models.builtin import ResNetCifar, SmallCNN
from lwrcli.models.heads import (
    get_classifier,
    make_classifier,
    set_head,
    set_submodule,
)
from lwrcli.models.tuning import apply_tuning
from lwrcli.models.weights import identity, load_pretrained, refusing_pickles

# Deprecated: the head of the built-in models only. Use classifier_key(model).
CLASSIFIER_KEY = "fc.weight"


def _external(
    cfg: ModelConfig, num_classes: int, log: Callable[[str], None] | None = None
) -> nn.Module:
    """A torchvision/timm model: build it with its default head (and named weights, which fit
    it exactly), then swap that head for one sized to the dataset (same random-number use as
    before `torchvision:` names existed, so the ResNet-50 recipes initialise bit for bit as
    they did)."""
    if cfg.weights is not None:
        model = _named_backbone(cfg, log or _stderr)
    else:
        model = families.create_backbone(cfg.name)
    path = families.find_head(model, cfg.name)
    old = model.get_submodule(path)
    assert isinstance(old, nn.Linear)  # find_head guarantees it
    set_submodule(
        model,
        path,
        make_classifier(old.in_features, num_classes, cfg.cosine, head_scale(cfg)),
    )
    model.lwr_head = path
    return model


def _own(build: Callable[[ModelConfig, int], nn.Module]) -> Callable[[ModelConfig, int], nn.Module]:
    def wrapped(cfg: ModelConfig, num_classes: int) -> nn.Module:
        model = build(cfg, num_classes)
        model.lwr_head = "fc"
        return model

    return wrapped


def head_scale(cfg: ModelConfig) -> float:
    """The cosine head's logit scale (1 for any other head)."""
    return float(getattr(cfg.head, "scale", 1.0)) if cfg.cosine else 1.0


# The built-in names; any other valid name (torchvision:, timm:) goes through _external.
MODELS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "small_cnn": _own(lambda cfg, c: SmallCNN(c, cfg.width, cfg.cosine, cfg.norm, head_scale(cfg))),
    "resnet32": _own(
        lambda cfg, c: ResNetCifar(c, 5, cfg.cosine, cfg.norm, cfg.resnet_width, head_scale(cfg))
    ),
    **{name: _external for name in families.ALIASES},
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# torchvision DenseNet files predate its module names ('norm.1' is now 'norm1'): the same
# renaming torchvision.models.densenet applies when it loads them.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}


def _named_backbone(cfg: ModelConfig, log: Callable[[str], None]) -> nn.Module:
    """A torchvision/timm model with its default head and the weights `cfg.weights` names,
    fetched into the hub cache if needed. timm loads its own files (its checkpoint filters
    map keys of older files; weights_only=True); torchvision files go through
    load_pretrained."""
    assert cfg.weights is not None
    named = hub.resolve(cfg.name, cfg.weights)
    path = fetch_weights(cfg)
    assert path is not None
    if named.family == "timm":
        with refusing_pickles(path):
            try:
                return families.create_backbone(
                    f"timm:{named.arch}",
                    pretrained=True,
                    pretrained_cfg_overlay={"file": str(path)},
                )
            except RuntimeError as exc:  # timm's load_state_dict: keys or shapes differ
                raise UserError(
                    f"Pretrained weights {path} ({named.label}) do not fit the model: "
                    f"{str(exc).splitlines()[0]}"
                ) from None
    model = families.create_backbone(cfg.name)
    fix = _densenet_keys if named.arch.startswith("densenet") else None
    result = load_pretrained(model, path, families.find_head(model, cfg.name), fix)
    log(f"{named.label}: {result.message()}")
    return model


def base_identity(cfg: ModelConfig) -> dict[str, str] | None:
    """The identity of the pretrained base `cfg` loads (see the module docstring), fetching
    named weights into the cache if needed; None when the model starts from random weights."""
    if cfg.pretrained is not None:
        return identity(str(cfg.pretrained), cfg.pretrained)
    if cfg.weights is not None:
        named = hub.resolve(cfg.name, cfg.weights)
        return identity(named.label, hub.fetch(named))
    return None


def fetch_weights(cfg: ModelConfig) -> Path | None:
    """The local file of `cfg.weights`, downloaded into the hub cache if needed (None without
    named weights). Training calls it before creating the run folder, so a missing file
    leaves nothing behind."""
    if cfg.weights is None:
        return None
    return hub.fetch(hub.resolve(cfg.name, cfg.weights))


def _clip(
    cfg: ModelConfig, num_classes: int, class_names: list[str] | None, log: Callable[[str], None]
) -> nn.Module:
    """A CLIP image tower with lwr's head; the head starts from the class names' text
    embeddings when `head_init: text` (the text tower is dropped afterwards)."""
    from lwrcli.models import clip

    arch = cfg.name.partition(":")[2]
    whole = clip.create_clip(arch, cfg.weights)
    path = fetch_weights(cfg)
    if path is not None:  # into the whole model: the text tower encodes the class names
        clip.load_weights(whole, path)
        log(f"clip:{arch}@{cfg.weights}: loaded {path}.")
    if cfg.pretrained is not None:
        log(load_pretrained(whole, cfg.pretrained, head="head").message())
    model, text_map = clip.build_classifier(
        whole, num_classes, cfg.cosine, head_scale(cfg), cfg.clip_projection
    )
    if cfg.head_init == "text":
        if class_names is None or len(class_names) != num_classes:
            raise UserError("model.head_init=text needs the dataset's class names (one per class).")
        rows = clip.encode_class_names(
            whole, clip.tokenizer_for(arch), class_names, cfg.text_templates
        )
        if text_map is not None:  # into the un-projected feature space (LIFT)
            rows = torch.nn.functional.normalize(rows @ text_map, dim=1)
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
    `class_names` feed text-initialised heads. The model records its pretrained base as
    `model.lwr_base` (lwrcli.models.weights.base_of)."""
    if cfg.pretrained_required and cfg.pretrained is None and cfg.weights is None:
        raise UserError(
            f"This recipe fine-tunes a pretrained {cfg.name}: name published weights "
            "(--set model.weights=NAME, fetched once into the hub cache; 'lwr models list' shows "
            "the names) or pass a local file (--set model.pretrained=/path/to/weights, "
            ".safetensors or a torchvision/timm .pth state dict)."
        )
    if num_classes < 2:
        raise UserError(f"A classifier needs at least 2 classes, the dataset has {num_classes}.")
    if cfg.name.startswith("clip:"):
        model = _clip(cfg, num_classes, class_names, log)
    elif cfg.weights is not None:  # never lwr's own names (the config refuses them)
        model = _external(cfg, num_classes, log)
    else:
        model = MODELS.get(cfg.name, _external)(cfg, num_classes)
    d = get_classifier(model).weight.shape[1]
    own_head = slot_method("head", cfg.head.name).build_head(cfg.head, d, num_classes)
    if own_head is not None:  # a fixed head, say, in place of the family's
        set_head(model, own_head)
    if cfg.pretrained is not None and not cfg.name.startswith("clip:"):
        result = load_pretrained(model, cfg.pretrained, head=model.lwr_head)
        log(result.message())
    # A structural variant (two branches, experts); freeze paths name its modules.
    model = slot_method("variant", cfg.variant.name).restructure(model, cfg.variant, cfg)
    if cfg.freeze:
        freeze(model, cfg.freeze)
    # The base a frozen-base checkpoint refers to (name and sha256 of the file loaded).
    model.lwr_base = base_identity(cfg)
    return apply_tuning(model, cfg, num_classes)


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
    """Every buildable model name matching `pattern` (see families.list_backbones), with the
    weight names each accepts."""
    infos = families.list_backbones(
        pattern, build_own=lambda name: build_model(ModelConfig(name=name), 1000)
    )
    for info in infos:
        info.weights = hub.accepted(info.name)
    return infos


def short_list(names: list[str], width: int = 44) -> str:
    """'a, b, c (+12 more)' within about `width` characters; '–' for none."""
    shown: list[str] = []
    for i, name in enumerate(names):
        rest = len(names) - i - 1
        tail = f" (+{rest} more)" if rest else ""
        if shown and len(", ".join([*shown, name])) + len(tail) > width:
            return ", ".join(shown) + f" (+{len(names) - len(shown)} more)"
        shown.append(name)
    return ", ".join(shown) or "–"


model_data_defaults = families.model_data_defaults


def models_table(infos: list[families.ModelInfo], pattern: str | None = None) -> Table:
    """`lwr models list`: name, family, parameters, head path, accepted model.weights."""
    table = Table(title=f"{len(infos)} models" + (f" matching '{pattern}'" if pattern else ""))
    for col in ("model.name", "family", "params (1000 classes)", "head", "model.weights"):
        table.add_column(col, justify="right" if col.startswith("params") else "left")
    width = 44 if len(infos) > 1 else 10**6  # one model: every name, wrapped by the table
    for info in infos:
        params = f"{info.params:,}" if info.params is not None else "–"
        head = info.head or ("–" if info.params is None else "not Linear: unsupported")
        table.add_row(info.name, info.family, params, head, short_list(info.weights, width))
    notes = ["model.weights: a name fetched once into the hub cache (or model.pretrained: PATH)"]
    if any(info.params is None and info.family == "timm" for info in infos):
        notes.append("timm parameter counts appear when at most 60 timm names match")
    if any(short_list(info.weights, width).endswith("more)") for info in infos):
        notes.append("a pattern that matches one name shows all its weights")
    table.caption = "; ".join(notes) + "."
    return table
