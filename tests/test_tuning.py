"""Lightweight fine-tuning (model.tuning): trainable counts against the closed forms, frozen
tensors untouched by training, frozen-base checkpoints that hold only what trained and reload
onto their base, and the whole CLI flow on a tiny open_clip ViT."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import train_args
from torch import nn

pytest.importorskip("open_clip")
pytest.importorskip("peft")

from lwrcli.checkpoint.files import checkpoint_payload, load_checkpoint, save_checkpoint  # noqa: E402
from lwrcli.config import ModelConfig, OptimConfig, load_config  # noqa: E402
from lwrcli.errors import UserError  # noqa: E402
from lwrcli.models import build_model, classifier_key  # noqa: E402
from lwrcli.models.tuning import apply_tuning, bottleneck_width  # noqa: E402
from lwrcli.train.optim import build_optimizer  # noqa: E402
from lwrcli.use.evaluate import load_model  # noqa: E402

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
C = 20  # classes of the synthetic dataset
METHODS = ["head", "bitfit", "layernorm", "lora", "adapter", "adaptformer", "vpt"]


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def base_file(tiny_json: Path) -> Path:
    """A 'pretrained' tiny CLIP: the whole model's random state dict as safetensors."""
    from safetensors.torch import save_file

    from lwrcli.models.clip import create_clip

    torch.manual_seed(123)
    path = tiny_json.parent / "base.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create_clip(str(tiny_json)).state_dict().items()}, path
    )
    return path


def _cfg(tiny_json: Path, tuning: str, **kw: object) -> ModelConfig:
    return ModelConfig(
        name=f"clip:{tiny_json}", head={"name": "cosine", "scale": 25}, tuning=tuning, **kw
    )


def _closed_form(method: str, r: int) -> int:
    """Trainable elements from the tiny config alone: d token width, h MLP width (4 d), L
    blocks; the head is C x d (cosine, no bias) on the features before the image projection,
    where LIFT puts it."""
    d, L = TINY["vision_cfg"]["width"], TINY["vision_cfg"]["layers"]
    h = 4 * d
    per_block = {
        "head": 0,
        # ln_1 d, attn in_proj 3d + out_proj d, ln_2 d, mlp c_fc h + c_proj d
        "bitfit": d + 3 * d + d + d + h + d,
        "layernorm": 2 * (2 * d),
        # LoRA on the MLP's two Linears (open_clip attention is nn.MultiheadAttention):
        # A (r, in) and B (out, r) for c_fc (d -> h) and c_proj (h -> d)
        "lora": r * (d + h) + r * (h + d),
        # LIFT's branches: own LayerNorm 2d, down d r + r, up r d + d (+ AdaptFormer's scale)
        "adapter": 2 * d * r + r + 3 * d,
        "adaptformer": 2 * d * r + r + 3 * d + 1,
        "vpt": r * d,
    }[method]
    outside_blocks = {"bitfit": 2 * d, "layernorm": 2 * 2 * d}.get(method, 0)  # ln_pre, ln_post
    return L * per_block + outside_blocks + C * d


def test_width_rule_is_lifts() -> None:
    for c in (2, 3, 20, 100, 365, 1000, 8142):
        for blocks in (2, 12, 24):
            lift = 2 ** max(0, int(math.log2(c / (blocks * 2))))  # LIFT's expression
            assert bottleneck_width(c, blocks) == lift, (c, blocks)
    assert bottleneck_width(1000, 12) == 32 and bottleneck_width(C, 2) == 4


@pytest.mark.parametrize("method", METHODS)
def test_trainable_count_closed_form_and_frozen_base_bit_identical(
    tiny_json: Path, method: str
) -> None:
    torch.manual_seed(0)
    plain = build_model(_cfg(tiny_json, "full"), C)
    torch.manual_seed(0)
    model = build_model(_cfg(tiny_json, method), C)
    r = 4  # LIFT's rule for 20 classes and 2 blocks
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == _closed_form(method, r)
    x = torch.randn(6, 3, 32, 32)
    if method != "vpt":  # every added module starts as the identity; prompts do not
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=0, atol=1e-5)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    opt = build_optimizer(model, OptimConfig(lr=0.5, weight_decay=5e-4), 0.5)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    model.train()
    y = torch.randint(0, C, (6,))
    for _ in range(3):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], t) for n, t in frozen.items())
    moved = [n for n, t in start.items() if not torch.equal(now[n], t)]
    assert "head.weight" in moved and len(moved) >= len(start) // 2


@pytest.mark.parametrize("method", ["adaptformer", "vpt", "lora"])
@pytest.mark.parametrize("family", ["timm", "torchvision"])
def test_timm_and_torchvision_vits(family: str, method: str) -> None:
    """The same methods on small timm/torchvision ViTs (LoRA on timm's attn.qkv/attn.proj)."""
    d, L, r = 64, 2, 4
    if family == "timm":
        timm = pytest.importorskip("timm")
        model = timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=8, embed_dim=d, depth=L, num_heads=2, num_classes=C
        )
        model.lwr_head, h, lora_in_out = "head", 4 * d, [(d, 3 * d), (d, d)]
    else:
        from torchvision.models.vision_transformer import VisionTransformer

        model = VisionTransformer(32, 8, L, 2, d, 2 * d, num_classes=C)
        model.lwr_head, h = "heads.head", 2 * d
        lora_in_out = [(d, h), (h, d)]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
    apply_tuning(model, ModelConfig(name="small_cnn", tuning=method, tuning_dim=r), C)
    per_block = {
        "adaptformer": 2 * d * r + r + 3 * d + 1,
        "vpt": r * d,
        "lora": sum(r * (i + o) for i, o in lora_in_out),
    }[method]
    head = C * d + C
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == L * per_block + head
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (2, C)
    if method != "vpt":
        torch.testing.assert_close(out, before, rtol=0, atol=1e-5)


def test_unsupported_model_names_what_is_supported() -> None:
    with pytest.raises(UserError, match="open_clip ViTs.*timm ViTs.*torchvision ViTs"):
        build_model(ModelConfig(name="small_cnn", width=8, tuning="adaptformer"), C)
    model = build_model(ModelConfig(name="small_cnn", width=8, tuning="bitfit"), C)
    assert all(
        n.endswith("bias") or n.startswith("fc.")
        for n, p in model.named_parameters()
        if p.requires_grad
    )


def test_checkpoint_holds_trainables_and_reloads_onto_its_base(
    tiny_json: Path, base_file: Path, tmp_path: Path
) -> None:
    import hashlib

    cfg = load_config(
        "synthetic-lt-bs-lwr",
        overrides=[
            f"model.name=clip:{tiny_json}",
            "model.head.name=cosine",
            "model.head.scale=25",
            "model.tuning=adaptformer",
            f"model.pretrained={base_file}",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, C, log=lambda _: None)
    with torch.no_grad():  # as if trained: every trainable tensor away from its init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    names = [f"c{i}" for i in range(C)]
    tensors, meta = checkpoint_payload(model, cfg, [1] * C, names, 1, {}, classifier_key(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(tensors) == trainable and "head.weight" in tensors
    assert meta["base_sha256"] == hashlib.sha256(base_file.read_bytes()).hexdigest()
    assert meta["base_name"] == str(base_file)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, cfg, [1] * C, names, 1, {}, classifier_key(model))
    ckpt = load_checkpoint(path)
    reloaded = load_model(ckpt, torch.device("cpu"))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model.eval()(x), rtol=0, atol=1e-6)
    other = tmp_path / "other.safetensors"
    other.write_bytes(base_file.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    cfg_other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": other})})
    ckpt.config = cfg_other
    with pytest.raises(UserError, match=meta["base_sha256"]) as err:
        load_model(ckpt, torch.device("cpu"))
    assert hashlib.sha256(other.read_bytes()).hexdigest() in str(err.value)


def test_random_base_stores_everything(tiny_json: Path) -> None:
    cfg = load_config("synthetic-lt-bs-lwr", overrides=[f"model.name=clip:{tiny_json}"])
    model = build_model(_cfg(tiny_json, "adapter"), C)
    tensors, meta = checkpoint_payload(model, cfg, [1] * C, ["c"] * C, 1, {}, "head.weight")
    assert set(tensors) == set(model.state_dict()) and "stored" not in meta


def test_stage2_init_from_a_frozen_base_checkpoint(
    tiny_json: Path, base_file: Path, six: Path, tmp_path: Path
) -> None:
    """--init (cRT) rebuilds the base, loads the stored adapters, re-initialises the head; its
    own checkpoints keep storing the adapters (frozen now) and the head."""
    from lwrcli.data.manifest import read_manifest
    from lwrcli.train.init_weights import start_weights

    manifest = read_manifest(six)
    sets = _clip_sets(tiny_json, base_file, "adaptformer")
    cfg = load_config("synthetic-lt-bs-lwr", overrides=sets)
    model = build_model(cfg.model, manifest.num_classes, class_names=manifest.class_names)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "stage1.safetensors"
    counts, names = manifest.class_counts, manifest.class_names
    extra = {"dataset_fingerprint": manifest.fingerprint}
    save_checkpoint(path, model, cfg, counts, names, 1, {}, "head.weight", extra)
    cfg2 = load_config("synthetic-lt-crt", overrides=[*sets, f"init.checkpoint={path}"])
    torch.manual_seed(5)
    fresh = build_model(cfg2.model, manifest.num_classes, class_names=manifest.class_names)
    fresh = start_weights(fresh, cfg2, manifest)  # the init checkpoint, the cRT head reset
    for method in cfg2.methods():  # then each method's surgery (stage 2: a frozen backbone)
        fresh = method.adapt_run_model(fresh, cfg2)
    adapters = set(model.lwr_tuned)
    now, then = fresh.state_dict(), model.state_dict()
    assert adapters and all(torch.equal(now[k], then[k]) for k in adapters)
    assert not torch.equal(now["head.weight"], then["head.weight"])  # cRT: a new head
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {"head.weight"}
    tensors, _ = checkpoint_payload(fresh, cfg2, counts, names, 1, {}, "head.weight")
    assert set(tensors) == adapters | {"head.weight"}


# --- through the CLI --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 classes, about 100 train images: a few steps of 16 per epoch."""
    from lwrcli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("six") / "data"
    prepare_synthetic(out, num_classes=6, n_max=40, test_per_class=4, imbalance_factor=8, seed=1)
    return out


def _clip_sets(tiny_json: Path, base: Path, tuning: str, *more: str) -> list[str]:
    return [
        f"model.name=clip:{tiny_json}",
        "model.head.name=cosine",
        "model.head.scale=25",
        "model.head_init=text",
        "model.text_templates=single",
        f"model.tuning={tuning}",
        f"model.pretrained={base}",
        "batch_size=16",
        "eval_every=1",
        "log_every=1",
        "device=cpu",
        *more,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("tuning", ["adaptformer", "lora"])
def test_cli_train_eval_analyze_on_a_frozen_clip_base(
    lwr, tiny_json: Path, base_file: Path, six: Path, tmp_path: Path, tuning: str
) -> None:
    import hashlib
    import shutil

    from safetensors.torch import load_file

    from lwrcli.train.runlog import read_metrics

    base = tmp_path / "base.safetensors"
    shutil.copy(base_file, base)
    run = tmp_path / "run"
    sets = _clip_sets(tiny_json, base, tuning, "epochs=1")
    r = lwr(*train_args("synthetic-lt-bs-lwr", six, run, *sets))
    assert r.code == 0, r.err[-2000:]
    said = " ".join((r.err + r.out).split())  # the console wraps long lines
    assert re.search(r"trainable [\d.]+ k of 1\d\d k parameters", said), said[:600]
    last = run / "checkpoints" / "last.safetensors"
    ckpt = load_checkpoint(last)
    assert ckpt.meta["base_sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    model = load_model(ckpt, torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt.state) == trainable and "head.weight" in trainable
    # Every tensor the checkpoint left out is the base file's, bit for bit, after training.
    # (The image projection is not part of a LIFT classifier: its head sits before it.)
    pretrained = {
        k: v
        for k, v in load_file(str(base)).items()
        if k.startswith("visual.") and k != "visual.proj"
    }
    frozen = {k: v for k, v in model.state_dict().items() if k not in ckpt.state}
    assert len(frozen) == len(pretrained)
    for key, value in frozen.items():
        assert torch.equal(value, pretrained[key.replace(".base_layer", "")]), key

    r = lwr("eval", last, "--data", six, "--json")
    assert r.code == 0, r.err[-2000:]
    final = read_metrics(run / "metrics.jsonl")[-1]
    # eval --json writes 6 significant digits (issue 24): 16.6667 for 16.666666666666664.
    assert json.loads(r.out)["top1"] == pytest.approx(final["test_top1"], rel=1e-5)
    r = lwr("analyze-weights", last, "--out", tmp_path / "analysis", "--data", six)
    assert r.code == 0, r.err[-2000:]
    assert (tmp_path / "analysis" / "summary.json").is_file()

    base.write_bytes(base.read_bytes()[:-4] + b"\x01\x02\x03\x04")  # another base, same shape
    r = lwr("eval", last, "--data", six)
    assert r.code == 2
    assert ckpt.meta["base_sha256"] in r.err
    assert hashlib.sha256(base.read_bytes()).hexdigest() in r.err


@pytest.mark.slow
def test_resume_of_a_stopped_lora_run_ends_like_an_uninterrupted_one(
    lwr, tiny_json: Path, base_file: Path, six: Path, tmp_path: Path, monkeypatch
) -> None:
    from resume_scenario import assert_same_run, stop_at_step

    from lwrcli.train.engine import Interrupted
    from lwrcli.train.run import train_run

    cfg = load_config(
        "synthetic-lt-bs-lwr", overrides=_clip_sets(tiny_json, base_file, "lora", "epochs=2")
    )
    train_run(cfg, six, tmp_path / "full")
    stop_at_step(monkeypatch, 3)  # as if Ctrl-C came in step 3
    with pytest.raises(Interrupted):
        train_run(cfg, six, tmp_path / "cut")
    monkeypatch.undo()
    r = lwr("train", "--resume", tmp_path / "cut")  # through the CLI this time
    assert r.code == 0, r.err[-2000:]
    assert_same_run(tmp_path / "full", tmp_path / "cut", holds="lora_A")
