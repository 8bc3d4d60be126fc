"""BBN's bilateral-branch network (Zhou et al., CVPR 2020, Megvii-Nanjing/BBN).

A residual network whose last residual block is duplicated: the shared trunk (everything up
to that block) feeds a conventional-learning block `cb_block` (seeing the instance sampler's
batch) and a re-balancing block `rb_block` (seeing the reversed sampler's batch). Each branch's
pooled feature (B, d) is weighted by the cumulative-learning weight α and 1 - α, and one
classifier `fc` (C, 2d) reads their concatenation, as in BBN's code:

    logits = fc(2 * [α f_c(x_c), (1 - α) f_r(x_r)])          (training, x_c and x_r paired)
    logits = fc([f_c(x), f_r(x)])                             (inference: α = 0.5, one image)

The factor 2 is BBN's: at α = 0.5 training and inference weight the features the same. The
head stays at `fc` (`lwr_head`), so LWR, analysis, checkpoints, eval and predict find it like
any other head; its weight is (C, 2d).

A training batch is (B, 2, 3, H, W): [:, 0] the conventional images, [:, 1] the reversed ones
(lwrcli.data.paired); anything 4-D is an inference batch. α lives in a non-persistent buffer
(`set_alpha`), so it moves with the model, never enters a checkpoint, and changing it does not
make torch.compile recompile.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.errors import UserError
from lwrcli.models.builtin import ResNetCifar
from lwrcli.models.heads import CosineLinear, make_classifier

SUPPORTED = (
    "resnet32 (CIFAR), resnet50, resnext50_32x4d, resnet152 and torchvision:<ResNet family> "
    "(resnet18..152, resnext*, wide_resnet*)"
)


class BBNNet(nn.Module):
    """trunk -> {cb_block, rb_block} -> global average pool -> fc over the (B, 2d) concatenation."""

    def __init__(
        self, trunk: nn.Module, block: nn.Module, rb_block: nn.Module, head: nn.Module
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.cb_block = block
        self.rb_block = rb_block
        self.fc = head
        self.lwr_head = "fc"
        self.register_buffer("alpha", torch.tensor(0.5), persistent=False)

    def set_alpha(self, alpha: float) -> None:
        """The cumulative-learning weight α in [0, 1] of the next training batches."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"BBN's alpha must be in [0, 1], got {alpha}")
        self.alpha.fill_(alpha)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def branch_features(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """One branch's pooled feature (B, d) of images x (B, 3, H, W)."""
        block = self.cb_block if branch == "cb" else self.rb_block
        return self._pool(block(self.trunk(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Inference feature (B, 2d): both branches on the same images, unweighted (α = 0.5
        with BBN's factor 2)."""
        shared = self.trunk(x)
        return torch.cat([self._pool(self.cb_block(shared)), self._pool(self.rb_block(shared))], 1)

    def mixed_features(self, pair: torch.Tensor) -> torch.Tensor:
        """Training feature (B, 2d) of a pair batch (B, 2, 3, H, W). Each branch's batch goes
        through the trunk on its own, as in BBN (its batch-norm statistics are its own)."""
        xc, xr = pair[:, 0], pair[:, 1]
        if self._channels_last():  # the model's memory format (channels_last: auto)
            xc = xc.contiguous(memory_format=torch.channels_last)
            xr = xr.contiguous(memory_format=torch.channels_last)
        a = self.alpha
        fc, fr = self.branch_features(xc, "cb"), self.branch_features(xr, "rb")
        return 2.0 * torch.cat([a * fc, (1.0 - a) * fr], dim=1)

    def _channels_last(self) -> bool:
        w = next(iter(self.trunk.parameters()), None)
        return w is not None and w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5 and x.shape[1] == 2:
            return self.fc(self.mixed_features(x))
        return self.fc(self.features(x))


class _CifarTrunk(nn.Module):
    """ResNetCifar's stem and every block but the last."""

    def __init__(self, net: ResNetCifar) -> None:
        super().__init__()
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layers = nn.Sequential(*list(net.layers)[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(F.relu(self.bn1(self.conv1(x))))


class _TorchvisionTrunk(nn.Module):
    """A torchvision ResNet's stem, layer1-3 and layer4 without its last block."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.layer4 = nn.Sequential(*list(net.layer4)[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _reinit_cifar(block: nn.Module) -> None:
    """ResNetCifar's own initialisation (LDAM-DRW's kaiming-normal convs; BN 1/0)."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _reinit_torchvision(block: nn.Module) -> None:
    """torchvision ResNet's initialisation (kaiming-normal fan_out convs; BN 1/0)."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def refuse(name: str, why: str) -> UserError:
    return UserError(
        f"model.variant.name=bbn needs a residual network whose last residual block can be "
        f"duplicated into BBN's two branches; {name} {why}. Supported: {SUPPORTED}. Use one of "
        "those or set model.variant.name=plain."
    )


def to_bbn(model: nn.Module, name: str, pretrained: bool) -> BBNNet:
    """BBN's two-branch network from a built single-branch ResNet (its head sized for C).

    The last residual block becomes `cb_block`; `rb_block` is a copy, re-initialised like the
    family initialises it when training from scratch (BBN builds the two blocks separately),
    or left equal to the pretrained block when starting from pretrained weights. The head is a
    new classifier over the 2d concatenated features (BBN's single FC layer)."""
    from torchvision.models import ResNet

    head = model.get_submodule(getattr(model, "lwr_head", "fc"))
    cosine = isinstance(head, CosineLinear)
    scale = float(getattr(head, "scale", 1.0))
    num_classes = int(head.weight.shape[0])
    if isinstance(model, ResNetCifar):
        trunk: nn.Module = _CifarTrunk(model)
        block = model.layers[-1]
        width = model.fc.weight.shape[1]
        reinit = _reinit_cifar
    elif isinstance(model, ResNet):
        trunk = _TorchvisionTrunk(model)
        block = model.layer4[-1]
        width = model.fc.weight.shape[1]
        reinit = _reinit_torchvision
    else:
        raise refuse(name, f"is a {type(model).__name__}, not a ResNet")
    rb_block = copy.deepcopy(block)
    if not pretrained:
        reinit(rb_block)
    fc = make_classifier(2 * width, num_classes, cosine, scale)
    if isinstance(model, ResNetCifar) and not cosine:
        nn.init.kaiming_normal_(fc.weight)  # as ResNetCifar initialises its own head
    return BBNNet(trunk, block, rb_block, fc)
