"""Any backbone: the name catalog (built-in, `torchvision:<name>`, `timm:<name>`), building a
torchvision/timm model with its default head, finding that head, listings and input defaults.

Nothing here is downloaded: torchvision models are built with `weights=None` and timm models
with `pretrained=False`; pretrained weights come from lwrcli.models.weights.
timm is optional and imported only when a `timm:` name is used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lwrcli.errors import UserError, closest, did_you_mean
from lwrcli.registry import load_plugins

# Built-in names: our own architectures, and short aliases kept from before `torchvision:`.
OWN = ("small_cnn", "resnet32")
ALIASES = {
    "resnet50": "torchvision:resnet50",
    "resnext50_32x4d": "torchvision:resnext50_32x4d",
    "resnet152": "torchvision:resnet152",
}
BUILTIN = OWN + tuple(ALIASES)


@dataclass
class Family:
    """A backbone family from a plugin, used as `<prefix>:<arch>`: `create(arch)` returns the
    model with a Linear classifier head (found like torchvision's: `get_classifier()`, fc,
    head, classifier), randomly initialised; `names()` lists the archs (None: any);
    `data_defaults(arch)` gives image_size/resize/mean/std; `fixed_size(arch)` the one input
    size it accepts (None: any)."""

    prefix: str
    create: Callable[[str], nn.Module]
    names: Callable[[], list[str]] | None = None
    data_defaults: Callable[[str], dict[str, Any] | None] | None = None
    fixed_size: Callable[[str], int | None] | None = None


PLUGIN_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """A backbone family from a plugin (lwrcli.registry.load_plugins)."""
    if family.prefix in ("torchvision", "timm", "clip") or family.prefix in PLUGIN_FAMILIES:
        raise ValueError(f"backbone family '{family.prefix}:' is already registered")
    PLUGIN_FAMILIES[family.prefix] = family
    return family


def plugin_family(name: str) -> tuple[Family, str] | None:
    """(the plugin family, arch) of a `<prefix>:<arch>` name, or None."""
    load_plugins()
    prefix, _, arch = name.partition(":")
    return (PLUGIN_FAMILIES[prefix], arch) if arch and prefix in PLUGIN_FAMILIES else None


TIMM_HINT = "timm is not installed; install the optional extra: pip install 'lwrcli[timm]'."
# Auxiliary classifiers only help training from scratch in the original recipes; off, so the
# forward returns plain logits (and their keys in pretrained files are skipped).
TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
# Where torchvision families keep their head, tried in order after timm's get_classifier():
# ResNet/RegNet/ResNeXt `fc`, ViT `heads.head`, Swin `head`, and `classifier` (a Linear, or a
# Sequential whose last Linear is the head: EfficientNet, MobileNet, ConvNeXt, VGG, MaxViT).
HEAD_PATHS = ("fc", "heads.head", "head", "classifier")


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError(TIMM_HINT) from None
    return timm


def resolve(name: str) -> str:
    """A config name -> the family-qualified name: 'resnet50' -> 'torchvision:resnet50'."""
    return ALIASES.get(name, name)


def check_model_name(name: str) -> str:
    """Raise ValueError (with the closest valid name) unless `name` is buildable.

    Fast for built-in names (nothing imported); `timm:` names import timm (UserError with the
    install hint when it is missing)."""
    if name in BUILTIN:
        return name
    plugin = plugin_family(name)
    if plugin is not None:
        fam, arch = plugin
        names = fam.names() if fam.names is not None else None
        if names is not None and arch not in names:
            raise ValueError(
                f"unknown {fam.prefix} model '{arch}'.{did_you_mean(arch, names)} "
                f"Its names: {', '.join(names[:20])}"
            )
        return name
    family, _, arch = name.partition(":")
    if family == "clip" and arch:
        from lwrcli.models.clip import check_clip_name

        check_clip_name(arch)
        return name
    if family == "torchvision" and arch:
        names = torchvision_names()
        if arch not in names:
            guess = closest(arch, names)
            hint = f" Did you mean 'torchvision:{guess}'?" if guess else ""
            raise ValueError(
                f"unknown torchvision model '{arch}'.{hint} 'lwr models list' shows all "
                f"{len(names)} torchvision classifiers"
            )
        return name
    if family == "timm" and arch:
        timm = import_timm()
        if not timm.is_model(arch.split(".")[0]):
            guess = closest(arch, timm.list_models())
            hint = f" Did you mean 'timm:{guess}'?" if guess else ""
            raise ValueError(f"unknown timm model '{arch}'.{hint}")
        return name
    tv = torchvision_names()
    if name in tv:
        hint = f" Did you mean 'torchvision:{name}'?"
    else:
        guess = closest(name, [*BUILTIN, *tv])
        hint = ""
        if guess:
            hint = f" Did you mean '{guess if guess in BUILTIN else 'torchvision:' + guess}'?"
    raise ValueError(
        f"unknown model '{name}'.{hint} Built-in: {', '.join(BUILTIN)}; or torchvision:<name>, "
        "timm:<name> (see 'lwr models list')"
    )


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A torchvision/timm model with random init and its default head (no download ever).
    `kwargs` go to the constructor (e.g. image_size=32 for torchvision ViTs; for timm,
    pretrained=True with pretrained_cfg_overlay={'file': PATH} loads a local file)."""
    plugin = plugin_family(name)
    if plugin is not None:
        return plugin[0].create(plugin[1])
    family, _, arch = resolve(name).partition(":")
    if family == "torchvision":
        import torchvision

        with warnings.catch_warnings():  # torchvision's init-weights FutureWarnings
            warnings.simplefilter("ignore", FutureWarning)
            return torchvision.models.get_model(
                arch, weights=None, **{**TORCHVISION_KWARGS.get(arch, {}), **kwargs}
            )
    if family == "timm":  # pretrained=True only with a local file (pretrained_cfg_overlay)
        return import_timm().create_model(arch, **{"pretrained": False, **kwargs})
    raise ValueError(f"not a torchvision/timm name: {name!r}")


def find_head(model: nn.Module, name: str = "model") -> str:
    """The attribute path of the classifier head (an nn.Linear), e.g. 'classifier.2'."""
    get = getattr(model, "get_classifier", None)
    if callable(get):  # timm models say where their head is
        head = get()
        path = next((p for p, m in model.named_modules() if m is head and p), None)
        if path is not None:
            return _linear_or_error(model, path, name)
    for path in HEAD_PATHS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.Sequential):
            linears = [k for k, m in mod.named_children() if isinstance(m, nn.Linear)]
            if linears:
                return f"{path}.{linears[-1]}"
        return _linear_or_error(model, path, name)
    raise UserError(
        f"Cannot find the classifier head of {name}: none of {', '.join(HEAD_PATHS)} (nor "
        "timm's get_classifier()) is a Linear layer. LWR needs class weight vectors (C, d)."
    )


def _linear_or_error(model: nn.Module, path: str, name: str) -> str:
    mod = model.get_submodule(path)
    if not isinstance(mod, nn.Linear):
        raise UserError(
            f"The classifier of {name} ('{path}') is a {type(mod).__name__}, not a Linear layer; "
            "LWR and the weight analysis need class weight vectors (C, d). Pick another model."
        )
    return path


# --- listing -------------------------------------------------------------------------------


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Move every parameter/buffer to the meta device as it is registered: for constructors
    that compute on tensors and so fail under `torch.device('meta')` (torchvision RegNet)."""
    reg_p, reg_b = nn.Module.register_parameter, nn.Module.register_buffer

    def param(self: nn.Module, n: str, p: nn.Parameter | None) -> None:
        if p is not None:
            p = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)
        reg_p(self, n, p)

    def buffer(self: nn.Module, n: str, b: torch.Tensor | None, persistent: bool = True) -> None:
        reg_b(self, n, None if b is None else b.to("meta"), persistent)

    nn.Module.register_parameter = param  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = reg_p  # type: ignore[method-assign]
        nn.Module.register_buffer = reg_b  # type: ignore[method-assign]


def meta_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build without allocating or initialising weights: shapes only, instant even for the
    644M-parameter RegNet-Y-128GF. For parameter counts and head discovery."""
    try:
        with torch.device("meta"):
            return create_backbone(name, **kwargs)
    except (NotImplementedError, RuntimeError):
        with _params_on_meta():
            return create_backbone(name, **kwargs)


@dataclass
class ModelInfo:
    name: str
    family: str  # built-in, torchvision, clip or timm
    params: int | None  # for 1000 classes (the default head); None when not computed
    head: str | None  # attribute path of the head; None when it is not a Linear
    weights: list[str] = field(default_factory=list)  # names model.weights accepts


def _info(
    name: str, family: str, count: bool, build_own: Callable[[str], nn.Module] | None
) -> ModelInfo:
    if not count:
        return ModelInfo(name, family, None, None)
    if name in OWN:
        if build_own is None:
            return ModelInfo(name, family, None, None)
        with torch.device("meta"):
            model = build_own(name)
    else:
        model = meta_backbone(name)
    try:
        head: str | None = find_head(model, name)
    except UserError:
        head = None
    return ModelInfo(name, family, sum(p.numel() for p in model.parameters()), head)


def list_backbones(
    pattern: str | None = None,
    count_limit: int = 60,
    build_own: Callable[[str], nn.Module] | None = None,
) -> list[ModelInfo]:
    """Built-in, torchvision and (if installed) timm models whose name matches `pattern` (a
    glob such as 'convnext_*', or a substring). Parameter counts come from meta-device builds;
    timm's are skipped when more than `count_limit` timm names match (~0.1 s each)."""

    def match(name: str) -> bool:
        if not pattern:
            return True
        if any(ch in pattern for ch in "*?["):
            return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.split(":")[-1], pattern)
        return pattern.lower() in name.lower()

    out = [_info(n, "built-in", True, build_own) for n in BUILTIN if match(n)]
    out += [
        _info(f"torchvision:{n}", "torchvision", True, None)
        for n in torchvision_names()
        if match(f"torchvision:{n}")
    ]
    load_plugins()
    for fam in PLUGIN_FAMILIES.values():
        names = [f"{fam.prefix}:{n}" for n in (fam.names() if fam.names else [])]
        out += [_info(n, fam.prefix, True, None) for n in names if match(n)]
    try:
        import open_clip

        out += [
            ModelInfo(f"clip:{n}", "clip", None, "head")
            for n in open_clip.list_models()
            if match(f"clip:{n}")
        ]
    except ImportError:
        pass
    try:
        import timm
    except ImportError:
        return out
    names = [f"timm:{n}" for n in timm.list_models() if match(f"timm:{n}")]
    out += [_info(n, "timm", len(names) <= count_limit, None) for n in names]
    return out


def model_data_defaults(name: str) -> dict[str, Any] | None:
    """Input size and normalisation the model was made for, where it says: timm's
    pretrained_cfg, or the default torchvision weights' eval transforms (metadata only, no
    download). Keys: image_size, resize, mean, std. None for our own models."""
    plugin = plugin_family(name)
    if plugin is not None:
        fam, arch = plugin
        return fam.data_defaults(arch) if fam.data_defaults is not None else None
    family, _, arch = resolve(name).partition(":")
    if family == "clip":
        from lwrcli.models.clip import data_defaults

        return data_defaults(arch)
    if family == "timm":
        cfg = import_timm().get_pretrained_cfg(arch)
        if cfg is None:
            return None
        size = int(cfg.input_size[-1])
        return {
            "image_size": size,
            "resize": int(size / (cfg.crop_pct or 1.0)),
            "mean": tuple(float(v) for v in cfg.mean),
            "std": tuple(float(v) for v in cfg.std),
        }
    if family == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
        except (ValueError, AttributeError, KeyError):
            return None
        preset = weights.transforms  # functools.partial(ImageClassification, crop_size=...)
        if not isinstance(preset, functools.partial):
            return None
        # Arguments not given in the partial take ImageClassification's defaults.
        params = inspect.signature(preset.func).parameters
        kw = {k: p.default for k, p in params.items() if p.default is not p.empty}
        kw.update(preset.keywords)
        if "crop_size" not in kw:
            return None
        return {
            "image_size": int(kw["crop_size"]),
            "resize": int(kw.get("resize_size", kw["crop_size"])),
            "mean": tuple(float(v) for v in kw["mean"]),
            "std": tuple(float(v) for v in kw["std"]),
        }
    return None


def fixed_input_size(name: str) -> int | None:
    """The one input size a model accepts (a ViT's position embeddings, a CLIP tower's
    attention pooling), or None when any size works (convolutional nets with global pooling).
    CLIP image towers always; timm models whose pretrained_cfg says `fixed_input_size`;
    torchvision's ViTs and MaxViT, which assert their image size."""
    if name in OWN:
        return None
    plugin = plugin_family(name)
    if plugin is not None:
        fam, arch = plugin
        return fam.fixed_size(arch) if fam.fixed_size is not None else None
    family, _, arch = resolve(name).partition(":")
    if family == "clip":
        return int(model_data_defaults(name)["image_size"])  # type: ignore[index]
    if family == "timm":
        cfg = import_timm().get_pretrained_cfg(arch)
        if cfg is not None and getattr(cfg, "fixed_input_size", False):
            return int(cfg.input_size[-1])
        return None
    if family == "torchvision" and arch.startswith(("vit_", "maxvit")):
        size = getattr(meta_backbone(name), "image_size", None)  # as built, without weights
        return int(size[0] if isinstance(size, (list, tuple)) else size) if size else 224
    return None
