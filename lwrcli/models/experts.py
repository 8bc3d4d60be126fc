"""Multi-expert networks: one shared trunk, K expert branches with their own later stages and
classifier each, and the aggregate of their logits.

The layout is RIDE's (Wang et al., "Long-tailed Recognition by Routing Diverse
Distribution-Aware Experts", ICLR 2021), which SADE (Zhang et al., NeurIPS 2022) and BalPoE
(Sanchez Aimar et al., CVPR 2023) reuse. Read in the authors' code:
frank-xwang/RIDE-LongTailRecognition model/ldam_drw_resnets/ride_resnet_cifar.py (`ResNet_s`),
emasa/BalPoE-CalibratedLT model/ldam_drw_resnets/expert_resnet_cifar.py and
model/fb_resnets/Expert_ResNeXt.py (the files SADE's model/model.py imports by those names):

- ResNet-32 (CIFAR): conv1, bn1 and stage 1 shared, stages 2-3 per expert; RIDE's reduced
  experts (`reduce_dimension`) are 24 / 48 channels wide instead of 32 / 64;
- ResNet-50 / ResNeXt-50 (torchvision): stem, layer1 and layer2 shared, layer3-4 per expert;
  reduced: 192 / 384 planes instead of 256 / 512.

`shared_stages` moves the split; a reduced expert stage is 3/4 as wide (the authors' numbers).
Each expert pools its last stage and applies its own classifier `fc.k` (linear, or cosine:
the authors' NormedLinear times s = 30 is lwr's cosine head with `scale: 30`). The forward
returns the mean of the experts' logits (the authors' `final_out`), what evaluation, predict,
export and the training step use; `expert_logits` returns them all, (B, K, C). The model
records its heads as `lwr_heads` (lwrcli.models.heads), so LWR, geometry, checkpoints and
evaluation find every expert's classifier. RIDE's optional router (expert assignment) and its
distillation stage are not part of this network.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwrcli.errors import UserError
from lwrcli.models.builtin import ResNetCifar, _BasicBlock
from lwrcli.models.heads import CosineLinear, make_classifier

# A reduced expert stage is this fraction as wide (RIDE: 32 -> 24, 64 -> 48, 256 -> 192 ...).
REDUCED = 0.75
SUPPORTED = (
    "resnet32 (CIFAR), resnet50, resnext50_32x4d, resnet152 and torchvision:<ResNet family> "
    "(resnet18..152, resnext*, wide_resnet*)"
)


def aggregate_logits(z: Tensor, weights: Tensor | None = None) -> Tensor:
    """Expert logits (N, K, C) -> (N, C): their mean (uniform aggregation, the model's
    output), or Σ_k w_k z_k for aggregation weights w (K,) (SADE's test-time weights)."""
    if weights is None:
        return z.mean(1)
    return torch.einsum("nkc,k->nc", z, weights.to(device=z.device, dtype=z.dtype))


class ExpertHeads(nn.ModuleList):
    """The K classifiers, `fc.0` ... `fc.{K-1}`: features [(B, d)] * K -> logits (B, K, C)."""

    def forward(self, features: list[Tensor]) -> Tensor:  # type: ignore[override]
        return torch.stack([head(f) for head, f in zip(self, features)], dim=1)


class ExpertsNet(nn.Module):
    """trunk -> K branches -> pool -> K heads; forward: the mean of the experts' logits."""

    def __init__(self, trunk: nn.Module, branches: list[nn.Module], heads: ExpertHeads) -> None:
        super().__init__()
        if len(branches) != len(heads) or len(branches) < 2:
            raise ValueError("ExpertsNet needs K >= 2 branches and as many heads")
        self.trunk = trunk
        self.experts = nn.ModuleList(branches)
        self.fc = heads
        self.num_experts = len(branches)
        self.lwr_heads = [f"fc.{k}" for k in range(self.num_experts)]
        self.lwr_head = self.lwr_heads[0]

    def expert_features(self, x: Tensor) -> list[Tensor]:
        """Each expert's pooled feature (B, d) of images x (B, 3, H, W)."""
        shared = self.trunk(x)
        return [F.adaptive_avg_pool2d(branch(shared), 1).flatten(1) for branch in self.experts]

    def expert_logits(self, x: Tensor) -> Tensor:
        """(B, K, C): every expert's logits."""
        return self.fc(self.expert_features(x))

    def forward(self, x: Tensor) -> Tensor:
        return aggregate_logits(self.expert_logits(x))


# --- ResNet-32 (CIFAR) -------------------------------------------------------------------


class _CifarTrunk(nn.Module):
    """ResNetCifar's stem and its first `blocks` residual blocks."""

    def __init__(self, net: ResNetCifar, blocks: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layers = nn.Sequential(*list(net.layers)[:blocks])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(F.relu(self.bn1(self.conv1(x))))


class _PadShortcut(nn.Module):
    """Option-A shortcut of the authors' CIFAR blocks: subsample by 2, zero-pad the channels
    from `in_planes` to `planes` ((planes - in_planes) // 2 before, the rest after)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.lo = (planes - in_planes) // 2
        self.hi = planes - in_planes - self.lo

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.lo, self.hi))


def _cifar_branch(in_planes: int, widths: list[int], blocks: int, norm: str) -> nn.Sequential:
    """Expert stages of `blocks` basic blocks each, the first of each stage with stride 2,
    initialised like ResNetCifar (LDAM-DRW's kaiming-normal convs; norms 1 / 0)."""
    layers: list[nn.Module] = []
    for planes in widths:
        for i in range(blocks):
            block = _BasicBlock(in_planes, planes, 2 if i == 0 else 1, norm)
            if i == 0:
                block.shortcut = _PadShortcut(in_planes, planes)
            layers.append(block)
            in_planes = planes
    branch = nn.Sequential(*layers)
    for m in branch.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    return branch


def _cifar_experts(
    net: ResNetCifar, k: int, shared: int, reduce: bool, norm: str, pretrained: bool
) -> tuple[nn.Module, list[nn.Module], int]:
    blocks = len(net.layers) // 3
    width = net.conv1.out_channels
    stage_widths = [width, 2 * width, 4 * width]
    trunk = _CifarTrunk(net, shared * blocks)
    own = nn.Sequential(*list(net.layers)[shared * blocks :])
    if not reduce:
        branches = [own] + [
            copy.deepcopy(own) if pretrained else _cifar_branch(
                stage_widths[shared - 1], stage_widths[shared:], blocks, norm
            )
            for _ in range(k - 1)
        ]  # fmt: skip
        return trunk, branches, stage_widths[-1]
    widths = [round(w * REDUCED) for w in stage_widths[shared:]]
    in_planes = stage_widths[shared - 1]
    return trunk, [_cifar_branch(in_planes, widths, blocks, norm) for _ in range(k)], widths[-1]


# --- torchvision ResNets -----------------------------------------------------------------


class _TorchvisionTrunk(nn.Module):
    """A torchvision ResNet's stem (conv1, bn1, relu, maxpool) and its first shared stages."""

    def __init__(self, net: nn.Module, stages: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layers = nn.Sequential(*[getattr(net, f"layer{i}") for i in range(1, stages + 1)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.maxpool(self.relu(self.bn1(self.conv1(x)))))


def _torchvision_stage(
    net: Any, block: type, inplanes: int, planes: int, blocks: int
) -> tuple[nn.Sequential, int]:
    """One ResNet stage of `blocks` blocks (stride 2), as torchvision's `_make_layer` builds
    it, with `net`'s groups, width per group and norm layer."""
    from torchvision.models.resnet import conv1x1

    norm = net._norm_layer
    out = planes * block.expansion
    downsample = nn.Sequential(conv1x1(inplanes, out, 2), norm(out))
    layers = [block(inplanes, planes, 2, downsample, net.groups, net.base_width, 1, norm)]
    layers += [
        block(out, planes, groups=net.groups, base_width=net.base_width, norm_layer=norm)
        for _ in range(1, blocks)
    ]
    return nn.Sequential(*layers), out


def _torchvision_init(module: nn.Module) -> None:
    """torchvision ResNet's initialisation (kaiming-normal fan_out convs; norms 1 / 0), which
    is also the authors' (normal(0, sqrt(2 / (k * k * out_channels))))."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _torchvision_experts(
    net: Any, k: int, shared: int, reduce: bool, pretrained: bool
) -> tuple[nn.Module, list[nn.Module], int]:
    stages = [getattr(net, f"layer{i}") for i in range(1, 5)]
    block = type(stages[0][0])
    counts = [len(s) for s in stages]
    planes = [64, 128, 256, 512]
    trunk = _TorchvisionTrunk(net, shared)
    own = nn.Sequential(*stages[shared:])
    features = planes[-1] * block.expansion
    if not reduce:
        branches = [own]
        for _ in range(k - 1):
            branch = copy.deepcopy(own)
            if not pretrained:
                _torchvision_init(branch)
            branches.append(branch)
        return trunk, branches, features
    branches = []
    for _ in range(k):
        inplanes, parts = planes[shared - 1] * block.expansion, []
        for p, n in zip(planes[shared:], counts[shared:]):
            stage, inplanes = _torchvision_stage(net, block, inplanes, round(p * REDUCED), n)
            parts.append(stage)
        branch = nn.Sequential(*parts)
        _torchvision_init(branch)
        branches.append(branch)
    return trunk, branches, inplanes


def refuse(name: str, why: str) -> UserError:
    return UserError(
        f"model.variant.name=experts splits a residual network into a shared trunk and K "
        f"expert branches; {name} {why}. Supported: {SUPPORTED}. Use one of those or set "
        "model.variant.name=plain."
    )


def to_experts(
    model: nn.Module,
    name: str,
    num_experts: int,
    shared_stages: int | None,
    reduce_width: bool,
    norm: str = "batch",
    pretrained: bool = False,
) -> ExpertsNet:
    """K experts from a built single-head ResNet (its head sized for C classes).

    The single model's stem and first `shared_stages` stages (None: 1 for ResNet-32, 2 for
    torchvision ResNets, the authors' split) become the trunk; its later stages become expert
    0 and K - 1 more are built the same way, initialised as the family initialises them
    (copies of the pretrained stages when starting from pretrained weights). Reduced experts
    (`reduce_width`) are all built anew at 3/4 width. Every expert gets a new head of the
    same kind as the model's (linear or cosine with its scale)."""
    from torchvision.models import ResNet

    head = model.get_submodule(getattr(model, "lwr_head", "fc"))
    cosine = isinstance(head, CosineLinear)
    if not (cosine or isinstance(head, nn.Linear)):
        raise refuse(name, f"has a {type(head).__name__} head (experts need linear or cosine)")
    scale = float(getattr(head, "scale", 1.0))
    num_classes = int(head.weight.shape[0])
    if reduce_width and pretrained:
        raise UserError(
            "model.variant.reduce_width=true builds narrower expert stages than the pretrained "
            "network's, so its weights cannot start them: set reduce_width=false to copy the "
            "pretrained stages into every expert, or train from scratch."
        )
    if isinstance(model, ResNetCifar):
        shared = 1 if shared_stages is None else shared_stages
        if not 1 <= shared <= 2:
            raise refuse(name, f"has 3 stages; shared_stages={shared} leaves no expert stage")
        trunk, branches, d = _cifar_experts(
            model, num_experts, shared, reduce_width, norm, pretrained
        )
    elif isinstance(model, ResNet):
        shared = 2 if shared_stages is None else shared_stages
        if not 1 <= shared <= 3:
            raise refuse(name, f"has 4 stages; shared_stages={shared} leaves no expert stage")
        trunk, branches, d = _torchvision_experts(
            model, num_experts, shared, reduce_width, pretrained
        )
    else:
        raise refuse(name, f"is a {type(model).__name__}, not a ResNet")
    heads = []
    for _ in range(num_experts):
        fc = make_classifier(d, num_classes, cosine, scale)
        if isinstance(model, ResNetCifar) and not cosine:
            nn.init.kaiming_normal_(fc.weight)  # as ResNetCifar initialises its own head
        heads.append(fc)
    return ExpertsNet(trunk, branches, ExpertHeads(heads))


def find_experts(model: nn.Module) -> ExpertsNet:
    """The ExpertsNet inside `model` (itself, or wrapped by DDP / the compile fallback)."""
    from lwrcli.runtime.modules import unwrap

    raw = unwrap(model)
    if not isinstance(raw, ExpertsNet):
        raise UserError(
            "This loss trains each expert of a multi-expert model on its own logits; the "
            f"model is a {type(raw).__name__}. Set model.variant.name=experts."
        )
    return raw
