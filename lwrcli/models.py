"""Models: ResNet-32 (CIFAR, as defined by LDAM-DRW), a small CNN, torchvision ResNets.

Every model names its classifier `fc`, so `fc.weight` (C, d) is what LWR repels and what
analysis reads. A cosine classifier (`CosineLinear`) outputs cos(x, w_c) in [-1, 1]; the loss
(LDAM) applies the scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.config import ModelConfig
from lwrcli.errors import UserError

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


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for CIFAR: widths 16/32/64, n basic blocks per stage; n=5 is ResNet-32."""

    def __init__(self, num_classes: int, blocks: int = 5, cosine: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
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

    def __init__(self, num_classes: int, width: int = 32, cosine: bool = False) -> None:
        super().__init__()
        chans = (3, width, 2 * width, 4 * width)
        stages: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            stages += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.body = nn.Sequential(*stages)
        self.fc = _classifier(4 * width, num_classes, cosine)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _torchvision(arch: str) -> Callable[[ModelConfig, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        if cfg.pretrained is not None:
            load_pretrained(model, cfg.pretrained)
        model.fc = _classifier(model.fc.in_features, num_classes, cfg.cosine_classifier)
        return model

    return build


MODELS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "small_cnn": lambda cfg, c: SmallCNN(c, cfg.width, cfg.cosine_classifier),
    "resnet32": lambda cfg, c: ResNetCifar(c, 5, cfg.cosine_classifier),
    "resnet50": _torchvision("resnet50"),
    "resnext50_32x4d": _torchvision("resnext50_32x4d"),
    "resnet152": _torchvision("resnet152"),
}


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.name not in MODELS:
        raise UserError(f"Unknown model '{cfg.name}'. Available: {', '.join(MODELS)}.")
    if cfg.pretrained_required and cfg.pretrained is None:
        raise UserError(
            f"This recipe fine-tunes a pretrained {cfg.name}: pass "
            "--set model.pretrained=/path/to/weights (.safetensors or a torchvision .pth "
            "state dict); nothing is downloaded."
        )
    if num_classes < 2:
        raise UserError(f"A classifier needs at least 2 classes, the dataset has {num_classes}.")
    return MODELS[cfg.name](cfg, num_classes)


def load_pretrained(model: nn.Module, path: Path) -> None:
    """Load a local backbone file (safetensors, or a torchvision state dict read with
    `weights_only=True`, which refuses arbitrary pickled objects). The old classifier is
    dropped: the new `fc` is sized for this dataset. Nothing is ever downloaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Pretrained weights file {path} does not exist (model.pretrained).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
    except Exception as exc:  # any reader failure is a bad file from the user
        raise UserError(f"Cannot read pretrained weights {path}: {exc}") from None
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(
            f"Pretrained weights {path} do not fit the model: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )


def get_classifier(model: nn.Module) -> nn.Module:
    """The classifier head (a module whose `weight` is (C, d)): what LWR repels, analysis reads
    and stage-2 training re-learns. The one place that knows where a model keeps its head."""
    return model.fc  # type: ignore[return-value]


def classifier_key(model: nn.Module) -> str:
    """The state-dict key of the classifier weight (C, d)."""
    return CLASSIFIER_KEY


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
