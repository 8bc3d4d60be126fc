"""Optimizer: defaults identical to plain SGD, lr multipliers, layer-wise decay, no-decay
groups, freezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lwrcli.config import ModelConfig, OptimConfig
from lwrcli.errors import UserError
from lwrcli.models import build_model
from lwrcli.train.optim import build_optimizer, set_lr


def _groups_by_name(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, tuple]:
    """Parameter name -> (lr, lr_mult, weight_decay) of its group."""
    where = {id(p): g for g in opt.param_groups for p in g["params"]}
    return {
        n: (where[id(p)]["lr"], where[id(p)]["lr_mult"], where[id(p)]["weight_decay"])
        for n, p in model.named_parameters()
        if id(p) in where
    }


def test_defaults_are_plain_sgd_bit_for_bit() -> None:
    cfg = OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model(ModelConfig(name="small_cnn", width=8), 5))
    plain = torch.optim.SGD(
        models[0].parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    ours = build_optimizer(models[1], cfg, 0.1)
    assert len(ours.param_groups) == 1
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    for step, lr in enumerate([0.1, 0.05, 0.01]):
        for g in plain.param_groups:
            g["lr"] = lr
        set_lr(ours, lr)
        for model, opt in zip(models, (plain, ours)):
            opt.zero_grad()
            F.cross_entropy(model(x + step), y).backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_layer_decay_and_multipliers_on_vit() -> None:
    with torch.device("meta"):  # shapes only: vit_b_16 has 12 encoder blocks
        model = build_model(ModelConfig(name="torchvision:vit_b_16"), 7)
    cfg = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5, head_lr_mult=10.0)
    opt = build_optimizer(model, cfg, 1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    got = _groups_by_name(model, opt)
    layer = "encoder.layers.encoder_layer_"
    # (lr multiplier, weight decay): embeddings id 0 -> 0.5^13, block i -> 0.5^(12 - i),
    # final norm id 13 -> 1, head 10; no decay on biases and LayerNorm parameters.
    expected = {
        "class_token": (0.5**13, 0.05),
        "conv_proj.weight": (0.5**13, 0.05),
        "conv_proj.bias": (0.5**13, 0.0),
        "encoder.pos_embedding": (0.5**13, 0.05),
        f"{layer}0.ln_1.weight": (0.5**12, 0.0),
        f"{layer}0.self_attention.in_proj_weight": (0.5**12, 0.05),
        f"{layer}5.mlp.0.weight": (0.5**7, 0.05),
        f"{layer}11.mlp.3.bias": (0.5**1, 0.0),
        "encoder.ln.weight": (1.0, 0.0),
        "heads.head.weight": (10.0, 0.05),
        "heads.head.bias": (10.0, 0.0),
    }
    for name, (mult, wd) in expected.items():
        assert got[name] == (pytest.approx(1e-3 * mult), pytest.approx(mult), wd), name
    assert len(got) == len(list(model.parameters()))
    set_lr(opt, 2e-3)
    for g in opt.param_groups:
        assert g["lr"] == 2e-3 * g["lr_mult"]


def test_head_and_backbone_multipliers_and_sgd_no_decay_option() -> None:
    model = build_model(ModelConfig(name="resnet32"), 10)
    cfg = OptimConfig(head_lr_mult=5.0, backbone_lr_mult=0.1, no_decay_norm_bias=True)
    got = _groups_by_name(model, build_optimizer(model, cfg, 0.2))
    assert got["fc.weight"] == (pytest.approx(1.0), 5.0, 2e-4)
    assert got["fc.bias"] == (pytest.approx(1.0), 5.0, 0.0)
    assert got["conv1.weight"] == (pytest.approx(0.02), 0.1, 2e-4)
    assert got["bn1.weight"] == (pytest.approx(0.02), 0.1, 0.0)
    # SGD's default keeps weight decay on everything (today's recipes).
    plain = _groups_by_name(model, build_optimizer(model, OptimConfig(), 0.2))
    assert {v[2] for v in plain.values()} == {2e-4}


def test_layer_decay_needs_vit_blocks() -> None:
    model = build_model(ModelConfig(name="resnet32"), 10)
    with pytest.raises(UserError, match="layer_decay needs a ViT-style model"):
        build_optimizer(model, OptimConfig(layer_decay=0.7), 0.1)


def test_freeze_prefixes() -> None:
    model = build_model(ModelConfig(name="resnet32", freeze=["conv1", "bn1", "layers.0"]), 10)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "bn1.weight", "bn1.bias"} | {
        n for n, _ in model.named_parameters() if n.startswith("layers.0.")
    }
    opt = build_optimizer(model, OptimConfig(), 0.1)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in trained for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(UserError, match="Did you mean 'layers'.*Top-level modules: conv1"):
        build_model(ModelConfig(name="resnet32", freeze=["layer"]), 10)
