"""Every shipped preset builds its model and loss on CPU and takes one real training step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lwrcli.config import list_presets, load_config
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import read_manifest
from lwrcli.data.synthetic import prepare_synthetic
from lwrcli.errors import UserError
from lwrcli.methods.losses import reweight_for_epoch
from lwrcli.models import build_model, get_classifier
from lwrcli.models import families as backbones
from lwrcli.train.build import build_components, train_loader_hook
from lwrcli.train.engine import Trainer
from lwrcli.train.resolve import resolve_config

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}
CPU_TINY = [
    "dataset=any",
    "batch_size=4",
    "amp=none",
    "device=cpu",
    "channels_last=false",
    "model.pretrained_required=false",
    "model.weights=null",  # named weights are fetched: tests/test_weights_by_name.py
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare_synthetic(out, num_classes=5, n_max=12, test_per_class=2, imbalance_factor=4, seed=0)
    return out


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds_and_takes_one_step(
    name: str, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preset's own model builds and runs forward; its loss, LWR, optimizer and schedule
    then take one real training step on a small CNN with the preset's head (the suite's cost
    stays flat as ResNet-50/152 presets are added)."""
    overrides = list(CPU_TINY)
    if load_config(name).model.name.startswith("clip:"):
        # The preset's head, init and tuning on a tiny CLIP of the same family (a random
        # ViT-L/14 takes seconds per forward on a CPU); the arch name itself is validated.
        tiny_clip = tiny.parent / "tiny-clip.json"
        tiny_clip.write_text(json.dumps(TINY_CLIP))
        overrides += [f"model.name=clip:{tiny_clip}", "data.array_resize=32"]
    cfg = load_config(name, overrides=overrides)
    device = torch.device("cpu")
    # The training loader a run draws from: the methods' say included (BBN's paired batches,
    # the contrastive losses' augmented views (B, V, 3, H, W)).
    wrap = train_loader_hook(cfg, read_manifest(tiny).num_classes)
    data = build_data(tiny, cfg, device, train_wrap=wrap)
    x, y = next(iter(data.train))
    arch = cfg.model.name.removeprefix("torchvision:")
    if arch.startswith("vit_"):  # torchvision ViTs take one input size; use the tiny images'
        monkeypatch.setitem(backbones.TORCHVISION_KWARGS, arch, {"image_size": x.shape[-1]})
    real = build_model(cfg.model, data.num_classes, class_names=data.manifest.class_names)
    real.eval()
    with torch.no_grad():  # one image batch (the first of a batch's views or pairs)
        assert real(x[:, 0] if x.dim() == 5 else x).shape == (x.shape[0], data.num_classes)

    # BBN's two-branch ResNet-32 stays (small already; a small CNN has no block to duplicate);
    # multi-expert recipes take their step on a narrow ResNet-32 split into the same experts.
    bbn = cfg.model.variant.name == "bbn"
    small = [] if bbn else ["model.name=small_cnn", "model.width=8"]
    if cfg.model.variant.name == "experts":
        small = ["model.name=resnet32", "model.resnet_width=4"]
    cfg = load_config(
        name,
        overrides=[
            *CPU_TINY,
            *small,
            "model.freeze=[]",
            "optim.layer_decay=null",
            "model.head_init=random",  # CLIP recipes: text init and adapters need CLIP
            "model.tuning=full",
        ],
    )
    manifest = data.manifest
    cfg = resolve_config(cfg, device, manifest.storage, data.num_classes, manifest.image_size).cfg
    parts = build_components(cfg, data, device)
    trainer = Trainer(cfg, parts, device, run_dir=None)
    head = get_classifier(parts.raw_model)
    before = head.weight.detach().clone()
    t = cfg.schedule.warmup_epochs + 0.5  # past warm-up so the lr is not zero
    weight = None
    if cfg.loss.reweight != "none":
        weight = reweight_for_epoch(cfg.loss, data.class_counts, 10**6)
    terms = trainer.train_step(x, y, t, weight)
    assert math.isfinite(float(terms["loss"]))
    # LWR contributes from the first step whenever it is on, its margin can bind and the
    # classifier trains (LWS freezes it: LWR is inert there).
    frozen = cfg.section("stage2").mode == "lws"
    assert (trainer.regularizer is None) == (not cfg.lwr.enabled or frozen)
    assert ("lwr" in terms) == (
        trainer.regularizer is not None
        and (cfg.lwr.theta == "init" or cfg.lwr.theta < 1.0)
        and trainer.regularizer.lam(t) > 0
    )
    if frozen:  # the classifier is frozen: only its scales learn
        assert torch.equal(before, head.weight) and not torch.equal(head.scales, torch.ones(5))
    elif cfg.model.head.name == "etf":  # a fixed simplex: never trained
        assert torch.equal(before, head.weight)
    else:
        assert not torch.equal(before, head.weight)
    if cfg.loss.name == "ldam":
        assert cfg.model.head.name == "cosine"


def test_places_presets_need_pretrained_weights(tiny: Path) -> None:
    """Places-LT fine-tunes an ImageNet ResNet-152: named weights (fetched) or a local file."""
    cfg = load_config("places-lt-bs-lwr", overrides=["model.weights=null"])
    with pytest.raises(UserError, match="model.weights=NAME.*model.pretrained="):
        build_model(cfg.model, 5)
