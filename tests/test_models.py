"""Models: the LDAM-DRW ResNet-32 definition, classifiers, torchvision backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lwrcli.config import ModelConfig
from lwrcli.errors import UserError
from lwrcli.models import MODELS, CosineLinear, build_model, count_parameters, get_classifier


def test_resnet32_matches_ldam_definition() -> None:
    model = build_model(ModelConfig(name="resnet32"), 100)
    assert count_parameters(model) == 470_004
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 3 * 5 * 2  # stem + 15 blocks of two convs (option-A: no 1x1)
    assert [c.out_channels for c in convs[1::10]] == [16, 32, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_option_a_shortcut_zero_pads_channels() -> None:
    model = build_model(ModelConfig(name="resnet32"), 10)
    block = model.layers[5]  # first block of stage 2: 16 -> 32 channels, stride 2
    x = torch.randn(1, 16, 8, 8)
    sc = block.shortcut(x)
    assert sc.shape == (1, 32, 4, 4)
    assert torch.equal(sc[:, 8:24], x[:, :, ::2, ::2])
    assert sc[:, :8].abs().sum() == 0 and sc[:, 24:].abs().sum() == 0


def test_cosine_classifier_outputs_cosines() -> None:
    layer = CosineLinear(8, 5)
    x = torch.randn(4, 8, dtype=torch.float64)
    layer = layer.double()
    expected = (x / x.norm(dim=1, keepdim=True)) @ (
        layer.weight / layer.weight.norm(dim=1, keepdim=True)
    ).t()
    assert torch.allclose(layer(x), expected)
    assert layer(x).abs().max() <= 1 + 1e-12


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_exposes_classifier(name: str) -> None:
    model = build_model(ModelConfig(name=name), 7)
    assert get_classifier(model).weight.shape[0] == 7
    size = 32 if name in ("resnet32", "small_cnn") else 64
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, size, size))
    assert out.shape == (1, 7)


def test_pretrained_from_local_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = build_model(ModelConfig(name="resnet50"), 1000)
    path = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = build_model(ModelConfig(name="resnet50", pretrained=path), 10)
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    assert get_classifier(model).weight.shape == (10, 2048)


def test_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_model(ModelConfig(name="resnet50", pretrained=tmp_path / "none.pth"), 10)
    with pytest.raises(UserError, match="model.pretrained"):
        build_model(ModelConfig(name="resnet152", pretrained_required=True), 10)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="Cannot read"):
        build_model(ModelConfig(name="resnet50", pretrained=bad), 10)


def test_small_cnn_learns_a_separable_toy_problem() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="small_cnn", width=8), 2)
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() > 0.9
