"""Pretrained weights by name (`model.weights`), offline, from fake torch hub and Hugging Face
caches laid out as the libraries lay them out: the file found is the one loaded, a missing one
is a clear exit 2, a pickled object is refused, and the base identity is the file's sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import train_args
from safetensors.torch import save_file

from lwrcli.config import ModelConfig, load_config
from lwrcli.errors import UserError
from lwrcli.models import base_of, build_model, families, get_classifier, list_models
from lwrcli.models import clip as lwr_clip
from lwrcli.train.resolve import check_model, resolve_config

MOBILENET = "torchvision:mobilenet_v3_small"
MOBILENET_FILE = "mobilenet_v3_small-047dcff4.pth"  # the enum's url ends with this name
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PRESET = "synthetic-lt-bs-lwr"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty torch hub and Hugging Face caches, offline."""
    torch_home, hf_home = tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"torch": torch_home / "hub" / "checkpoints", "hf": hf_home / "hub"}


def hf_place(cache: Path, repo: str, filename: str) -> Path:
    """Where hf_hub_download finds `repo`/`filename` offline: snapshots/<commit>/ and refs/main."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: str) -> None:
    """Every tensor of the model outside the head `skip` equals the file's."""
    checked = 0
    for key, value in model.state_dict().items():
        if key.startswith(skip + "."):
            continue
        assert torch.equal(value, state[key]), key
        checked += 1
    assert checked > 10


def test_torchvision_enum_from_the_torch_hub_cache(caches: dict[str, Path]) -> None:
    torch.manual_seed(1)
    src = families.create_backbone(MOBILENET)
    path = caches["torch"] / MOBILENET_FILE
    path.parent.mkdir(parents=True)
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)  # another random init: only the file can make them equal
    model = build_model(ModelConfig(name=MOBILENET, weights="DEFAULT"), 5, log=lambda m: None)
    head = model.lwr_head
    assert_loaded(model, src.state_dict(), head)
    assert get_classifier(model).weight.shape[0] == 5
    assert base_of(model) == {
        "name": f"{MOBILENET}@IMAGENET1K_V1",  # DEFAULT is an alias: the identity is canonical
        "sha256": sha256(path),
        "file": str(path.resolve()),
    }


def test_clip_tag_from_the_hf_cache(
    caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny open_clip config given a pretrained tag: the whole CLIP model (image and text
    tower) is loaded from the cached safetensors before the head is built."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    arch = str(config)
    monkeypatch.setattr(lwr_clip, "pretrained_tags", lambda a: ["tiny"] if a == arch else [])
    monkeypatch.setattr(lwr_clip, "tag_config", lambda a, t: {"hf_hub": "lwr-test/tiny-clip/"})
    torch.manual_seed(1)
    src = {k: v.clone().contiguous() for k, v in lwr_clip.create_clip(arch).state_dict().items()}
    path = hf_place(caches["hf"], "lwr-test/tiny-clip", "open_clip_model.safetensors")
    save_file(src, str(path))
    torch.manual_seed(2)
    cfg = ModelConfig(name=f"clip:{arch}", weights="tiny")
    model = build_model(cfg, 4, log=lambda m: None)
    visual = {k.removeprefix("visual."): v for k, v in src.items() if k.startswith("visual.")}
    assert_loaded(model.visual, visual, "none")
    assert base_of(model) == {
        "name": f"clip:{arch}@tiny",
        "sha256": sha256(path),
        "file": str(path.resolve()),
    }


def test_timm_tag_from_the_hf_cache(caches: dict[str, Path]) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    src = timm.create_model("test_resnet.r160_in1k", pretrained=False).state_dict()
    path = hf_place(caches["hf"], "timm/test_resnet.r160_in1k", "model.safetensors")
    save_file({k: v.contiguous() for k, v in src.items()}, str(path))
    torch.manual_seed(2)
    model = build_model(ModelConfig(name="timm:test_resnet", weights="r160_in1k"), 3)
    assert_loaded(model, src, model.lwr_head)
    assert base_of(model)["name"] == "timm:test_resnet@r160_in1k"  # type: ignore[index]


def test_missing_weights_offline_exit_2_and_no_run_folder(
    caches: dict[str, Path], synthetic_data: Path, tmp_path: Path, lwr
) -> None:
    out = tmp_path / "run"
    sets = ["epochs=1", "device=cpu", f"model.name={MOBILENET}", "model.weights=IMAGENET1K_V1"]
    res = lwr(*train_args(PRESET, synthetic_data, out, *sets))
    assert res.code == 2, res.err
    err = " ".join(res.err.split())  # the console wraps long lines
    assert f"{MOBILENET}@IMAGENET1K_V1" in err
    assert str(caches["torch"] / MOBILENET_FILE) in err
    assert "model.pretrained=PATH" in err and "Traceback" not in res.err
    assert not out.exists()
    assert not caches["torch"].exists() or not any(caches["torch"].iterdir())


def test_missing_hf_weights_name_the_cache_path(caches: dict[str, Path]) -> None:
    with pytest.raises(UserError) as err:
        build_model(ModelConfig(name="clip:ViT-B-16", weights="openai"), 3)
    msg = str(err.value)
    assert "clip:ViT-B-16@openai" in msg and "HF_HUB_OFFLINE" in msg
    assert str(caches["hf"] / "models--timm--vit_base_patch16_clip_224.openai") in msg


class NotATensor:
    """A pickled object that weights_only loading must refuse."""


def test_pickled_object_in_a_downloaded_pth_is_refused(
    caches: dict[str, Path], synthetic_data: Path, tmp_path: Path, lwr
) -> None:
    path = caches["torch"] / MOBILENET_FILE
    path.parent.mkdir(parents=True)
    torch.save({"features.0.0.weight": torch.zeros(1), "obj": NotATensor()}, path)
    sets = ["epochs=1", "device=cpu", f"model.name={MOBILENET}", "model.weights=IMAGENET1K_V1"]
    res = lwr(*train_args(PRESET, synthetic_data, tmp_path / "run", *sets))
    assert res.code == 2, res.err
    err = " ".join(res.err.split())
    assert "Refusing" in err and "NotATensor" in err and "weights_only=True" in err


def test_weights_config_errors(lwr, synthetic_data: Path, tmp_path: Path) -> None:
    # Named weights are checked when the run is resolved (validation imports no model library).
    cpu = torch.device("cpu")
    for sets, refusal in [
        (
            ["model.name=resnet152", "model.weights=IMAGENET1K"],
            "IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT",
        ),
        (["model.name=small_cnn", "model.weights=DEFAULT"], "own architectures"),
    ]:
        cfg = load_config(PRESET, overrides=sets)
        with pytest.raises(UserError, match=refusal):
            check_model(cfg)
        with pytest.raises(UserError, match=refusal):
            resolve_config(cfg, cpu)
    with pytest.raises(UserError, match="keep one"):  # a rule of the config itself
        both = ["model.weights=DEFAULT", f"model.pretrained={tmp_path / 'r152.pth'}"]
        load_config(PRESET, overrides=["model.name=resnet152", *both])
    sets = ["model.name=resnet152", "model.weights=V3"]
    out = tmp_path / "run"
    res = lwr(*train_args(PRESET, synthetic_data, out, *sets))
    assert res.code == 2 and "Accepted: IMAGENET1K_V1" in " ".join(res.err.split())
    assert not out.exists()  # refused before the run folder is created


def test_places_presets_fetch_torchvision_resnet152(caches: dict[str, Path]) -> None:
    cfg = load_config("places-lt-bs-lwr")
    assert cfg.model.weights == "IMAGENET1K_V1" and cfg.model.pretrained is None
    with pytest.raises(UserError, match="resnet152-394f9c45.pth"):
        build_model(cfg.model, 5)


def test_models_list_shows_accepted_weights() -> None:
    infos = {i.name: i for i in list_models("mobilenet_v3_small")}
    assert infos[MOBILENET].weights == ["IMAGENET1K_V1", "DEFAULT"]
    clip = {i.name: i for i in list_models("clip:ViT-B-16")}
    assert "openai" in clip["clip:ViT-B-16"].weights
    assert list_models("resnet32")[0].weights == []  # lwr's own: a local file only
