"""Models: ResNet-32 (CIFAR, as defined by LDAM-DRW), a small CNN, and any torchvision/timm
classifier (lwrcli.backbones), each with its head re-sized to the dataset's classes.

Where the head lives differs by family (`fc`, `classifier.2`, `heads.head`, ...): build_model
records its attribute path as `model.lwr_head`, and `get_classifier` / `classifier_key` are
the one accessor that LWR, analysis, tau-norm and stage-2 training use. A cosine classifier
(`CosineLinear`) outputs cos(x, w_c) in [-1, 1]; the loss (LDAM) applies the scale.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn

from lwrcli import backbones
from lwrcli.checkpoint import unwrap
from lwrcli.config import ModelConfig
from lwrcli.errors import UserError, did_you_mean
from lwrcli.pretrained import load_pretrained

# Deprecated: the head of the built-in models only. Use classifier_key(model).
CLASSIFIER_KEY = "fc.weight"


class CosineLinear(nn.Module):
    """Normalised classifier: logits_c = cos(x, w_c). Weight (C, d), no bias."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        # LDAM-DRW's NormedLinear init: uniform, then rows rescaled to unit-ish norm.
        self.weight.data.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


def _classifier(in_features: int, num_classes: int, cosine: bool) -> nn.Module:
    return CosineLinear(in_features, num_classes) if cosine else nn.Linear(in_features, num_classes)


# --- ResNet-32 for 32x32 images (He et al. 2016, CIFAR variant; LDAM-DRW's resnet32) --------


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels (no parameters)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with 32 groups (the channel count when smaller): statistics that
    do not depend on the batch, for tiny per-device batches and batch-size-independent runs."""
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.BatchNorm2d(channels)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for CIFAR: widths 16/32/64, n basic blocks per stage; n=5 is ResNet-32."""

    def __init__(
        self, num_classes: int, blocks: int = 5, cosine: bool = False, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(norm, 16)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1, norm))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = _classifier(64, num_classes, cosine)
        for m in self.modules():  # LDAM-DRW's _weights_init: kaiming-normal convs and linears
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class SmallCNN(nn.Module):
    """Three conv stages (w, 2w, 4w) with pooling: trains in seconds on synthetic data on a CPU."""

    def __init__(
        self, num_classes: int, width: int = 32, cosine: bool = False, norm: str = "batch"
    ) -> None:
        super().__init__()
        chans = (3, width, 2 * width, 4 * width)
        stages: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            stages += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                norm_layer(norm, cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.body = nn.Sequential(*stages)
        self.fc = _classifier(4 * width, num_classes, cosine)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _external(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A torchvision/timm model: build it with its default head, then swap that head for one
    sized to the dataset (same random-number use as before `torchvision:` names existed, so
    the ResNet-50 recipes initialise bit for bit as they did)."""
    model = backbones.create_backbone(cfg.name)
    path = backbones.find_head(model, cfg.name)
    old = model.get_submodule(path)
    assert isinstance(old, nn.Linear)  # find_head guarantees it
    backbones.set_submodule(
        model, path, _classifier(old.in_features, num_classes, cfg.cosine_classifier)
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
    **{name: _external for name in backbones.ALIASES},
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def build_model(
    cfg: ModelConfig, num_classes: int, log: Callable[[str], None] = _stderr
) -> nn.Module:
    """The model for `cfg` with a `num_classes` head, pretrained weights loaded from a local
    file and `cfg.freeze` applied. `log` receives one line about left-out pretrained keys."""
    if cfg.pretrained_required and cfg.pretrained is None:
        raise UserError(
            f"This recipe fine-tunes a pretrained {cfg.name}: pass "
            "--set model.pretrained=/path/to/weights (.safetensors or a torchvision/timm .pth "
            "state dict); nothing is downloaded."
        )
    if num_classes < 2:
        raise UserError(f"A classifier needs at least 2 classes, the dataset has {num_classes}.")
    model = MODELS.get(cfg.name, _external)(cfg, num_classes)
    if cfg.pretrained is not None:
        result = load_pretrained(model, cfg.pretrained, head=model.lwr_head)
        log(result.message())
    if cfg.freeze:
        freeze(model, cfg.freeze)
    return model


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


def head_path(model: nn.Module) -> str:
    """Attribute path of the classifier head; 'fc' for models built before lwr_head existed."""
    path = getattr(unwrap(model), "lwr_head", None)
    return path if isinstance(path, str) else "fc"


def get_classifier(model: nn.Module) -> nn.Module:
    """The classifier head (a module whose `weight` is (C, d)): what LWR repels, analysis reads
    and stage-2 training re-learns. The one place that knows where a model keeps its head."""
    return unwrap(model).get_submodule(head_path(model))


def classifier_key(model: nn.Module) -> str:
    """The state-dict key of the classifier weight (C, d) of the unwrapped model."""
    return f"{head_path(model)}.weight"


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
    if name in backbones.OWN:
        return True  # resnet32, small_cnn
    return is_convolutional(backbones.meta_backbone(name))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def list_models(pattern: str | None = None) -> list[backbones.ModelInfo]:
    """Every buildable model name matching `pattern` (see backbones.list_backbones)."""
    return backbones.list_backbones(
        pattern, build_own=lambda name: build_model(ModelConfig(name=name), 1000)
    )


model_data_defaults = backbones.model_data_defaults


def models_table(infos: list[backbones.ModelInfo], pattern: str | None = None) -> Table:
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
