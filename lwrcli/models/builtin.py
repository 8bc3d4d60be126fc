"""lwr's own architectures: ResNet-32 for CIFAR (as LDAM-DRW defines it) and a small CNN that
trains in seconds on the synthetic data. Both keep their head at `fc`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.models.heads import make_classifier

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
    """ResNet-(6n+2) for CIFAR: widths w/2w/4w (w = 16: 16/32/64), n basic blocks per stage;
    n=5 is ResNet-32. Features have 4w dimensions (w = 32 is the ETF recipe's CIFAR-100 net)."""

    def __init__(
        self,
        num_classes: int,
        blocks: int = 5,
        cosine: bool = False,
        norm: str = "batch",
        width: int = 16,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(norm, width)
        layers: list[nn.Module] = []
        in_planes = width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            for i in range(blocks):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1, norm))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = make_classifier(4 * width, num_classes, cosine, scale)
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
        self,
        num_classes: int,
        width: int = 32,
        cosine: bool = False,
        norm: str = "batch",
        scale: float = 1.0,
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
        self.fc = make_classifier(4 * width, num_classes, cosine, scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
