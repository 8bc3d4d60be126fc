"""The one resolve step (lwrcli.train.resolve): the model's input needs reach the data
settings, so a backbone that takes one input size (a CLIP or timm or torchvision ViT) trains,
evaluates, predicts and exports on small-image arrays; resolving is done once and twice is
once; validation imports no model library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lwrcli.config import load_config
from lwrcli.errors import UserError
from lwrcli.train.resolve import check_model, resolve_config, with_array_resize

CPU = torch.device("cpu")
# A tiny open_clip ViT that takes 64 x 64 inputs only (4 x 4 patches of 16).
TINY64 = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("open_clip")
    path = tmp_path_factory.mktemp("clip") / "tiny64.json"
    path.write_text(json.dumps(TINY64))
    return f"clip:{path}"


def test_a_fixed_size_clip_tower_on_arrays_gets_its_size(tiny64: str) -> None:
    cfg = load_config("synthetic-lt-bs-lwr", overrides=[f"model.name={tiny64}"])
    got = with_array_resize(cfg, "arrays", 32)
    assert got.cfg.data.array_resize == 64
    assert "takes 64x64 inputs only" in got.notes[0] and "array_resize=64" in got.notes[0]
    # Image lists are cropped to data.image_size already; a size given by the user wins; a
    # stored size that fits needs nothing.
    assert with_array_resize(cfg, "lists", None).cfg.data.array_resize is None
    given = load_config(
        "synthetic-lt-bs-lwr", overrides=[f"model.name={tiny64}", "data.array_resize=96"]
    )
    assert with_array_resize(given, "arrays", 32).cfg.data.array_resize == 96
    assert with_array_resize(cfg, "arrays", 64).cfg.data.array_resize is None


@pytest.mark.parametrize(
    "name, size",
    [
        ("torchvision:vit_b_16", 224),
        ("torchvision:maxvit_t", 224),
        ("timm:vit_tiny_patch16_224", 224),
        ("torchvision:resnet18", None),
        ("torchvision:swin_t", None),
        ("timm:resnet18", None),
        ("resnet32", None),
    ],
)
def test_which_backbones_take_one_size(name: str, size: int | None) -> None:
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    cfg = load_config("synthetic-lt-bs", overrides=[f"model.name={name}"])
    assert with_array_resize(cfg, "arrays", 32).cfg.data.array_resize == size


def test_resolving_twice_is_resolving_once(tiny64: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lwrcli.runtime.device as device

    monkeypatch.setattr(device, "cpu_bf16_instructions", lambda: ())  # amp auto: fp32 here
    cfg = load_config(
        "synthetic-lt-bs-lwr",
        overrides=[f"model.name={tiny64}", "lwr.lambda_max=auto", "batch_size=16"],
    )
    once = resolve_config(cfg, CPU, "arrays", 5, 32)
    assert once.cfg.data.array_resize == 64
    assert once.cfg.amp == "none" and once.cfg.compile is False
    assert isinstance(once.cfg.lwr.lambda_max, float)
    # lr 0.05 at batch 64 -> 0.0125 at 16, recorded as the lr at the run's own batch.
    assert once.cfg.optim.lr == pytest.approx(0.0125) and once.cfg.optim.base_batch_size == 16
    assert once.cfg.effective_lr == once.cfg.optim.lr
    twice = resolve_config(once.cfg, CPU, "arrays", 5, 32)
    assert twice.cfg == once.cfg and twice.notes == []
    # What config.yaml holds validates back to the same resolved config.
    from lwrcli.config import validate_config

    again = validate_config(once.cfg.model_dump(mode="json"))
    assert resolve_config(again, CPU, "arrays", 5, 32).cfg == once.cfg


def test_model_checks_belong_to_the_resolve_step() -> None:
    cfg = load_config("synthetic-lt-bs", overrides=["model.name=resnet33"])  # validates
    with pytest.raises(UserError, match="model.name=resnet33: unknown model.*Did you mean"):
        check_model(cfg)
    cfg = load_config("synthetic-lt-bs", overrides=["model.tuning=lorra"])
    with pytest.raises(UserError, match="model.tuning='lorra'.*Did you mean 'lora'"):
        check_model(cfg)


def test_validating_a_config_imports_no_model_library() -> None:
    code = (
        "import sys\n"
        "from lwrcli.config import list_presets, load_config\n"
        "for name in list_presets(): load_config(name)\n"
        "heavy = ['torchvision', 'timm', 'open_clip', 'lwrcli.models.factory',"
        " 'lwrcli.models.families', 'lwrcli.models.clip', 'lwrcli.models.hub']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_fixed_size_clip_trains_evaluates_predicts_and_exports_on_arrays(
    lwr, tiny64: str, small: Path, tmp_path: Path
) -> None:
    """The issue's commands on a tiny fixed-size CLIP: train (old keys still accepted),
    zero-shot, then eval, predict and export of the run."""
    run = tmp_path / "r"
    sets = [
        f"model.name={tiny64}",
        "model.weights=null",
        "model.head_init=text",
        "model.cosine_classifier=true",  # the old key, as the command writes it
        "model.tuning=adaptformer",
        "dataset=any",
        "epochs=1",
        "batch_size=16",
        "device=cpu",
    ]
    args: list[object] = ["train", "--preset", "synthetic-lt-bs-lwr", "--data", small]
    args += ["--out", run]
    for item in sets:
        args += ["--set", item]
    r = lwr(*args)
    assert r.code == 0, r.err
    assert "takes 64x64 inputs only" in r.err and "model.head.name=cosine" in r.err
    assert "array_resize: 64" in (run / "config.yaml").read_text()

    zs = lwr("eval", "--zero-shot", tiny64, "--data", small, "--out", tmp_path / "zs")
    assert zs.code == 0, zs.err
    assert "takes 64x64 inputs only" in zs.err
    assert json.loads((tmp_path / "zs" / "summary.json").read_text())["num_samples"] == 20

    ckpt = run / "checkpoints" / "last.safetensors"
    ev = lwr("eval", ckpt, "--data", small, "--out", tmp_path / "ev")
    assert ev.code == 0, ev.err

    from PIL import Image

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 90, 200 - 30 * i)).save(pngs / f"{i}.png")
    pred = lwr("predict", ckpt, pngs, "--out", tmp_path / "p.csv", "--workers", "0")
    assert pred.code == 0, pred.err
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 4  # header + 3

    ex = lwr("export", ckpt, "--format", "torchscript", "--out", tmp_path / "exported")
    assert ex.code == 0, ex.err
    assert (tmp_path / "exported" / "model.pt").is_file()
    card = (tmp_path / "exported" / "model-card.md").read_text()
    assert "64" in card  # the exported model takes the stored 32 px images upsampled to 64
