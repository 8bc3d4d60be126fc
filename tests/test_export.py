"""`lwr export`: each covered model, exported to ONNX (run by onnxruntime) and TorchScript
(reloaded), gives the PyTorch model's logits on images normalised here by hand; the metadata
round-trips; bad inputs exit 2 and leave nothing behind."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args

from lwrcli.checkpoint.files import load_checkpoint, save_checkpoint
from lwrcli.config import load_config
from lwrcli.models import build_model, classifier_key
from lwrcli.use.evaluate import load_model

COUNTS = [120, 60, 30, 12, 4]  # many, medium x2, few x2
NAMES = ["cat", "dog", "ox", "emu", "yak"]
RECORD = {
    "epoch": 3,
    "test_top1": 61.5,
    "test_top5": 97.0,
    "test_many": 90.0,
    "test_medium": 55.0,
    "test_few": 20.0,
    "geom_cos_max": 0.41,
    "geom_norm_ratio": 1.7,
}
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _installed(*names: str) -> bool:
    try:
        for name in names:
            __import__(name)
    except ImportError:
        return False
    return True


needs_onnx = pytest.mark.skipif(
    not _installed("onnx", "onnxruntime", "onnxscript"),
    reason="the export extra (onnx, onnxruntime, onnxscript) is not installed",
)


def make_checkpoint(path: Path, *sets: str) -> Path:
    """A synthetic-recipe checkpoint of the model `sets` describe, its BatchNorm statistics
    taken from a few batches (as training leaves them), so logits have a trained scale."""
    cfg = load_config("synthetic-lt-bs-lwr", overrides=["model.width=8", *sets])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(COUNTS), class_names=NAMES, log=lambda _: None)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    extra = {"dataset_fingerprint": "f" * 64}
    save_checkpoint(path, model, cfg, COUNTS, NAMES, 3, RECORD, classifier_key(model), extra)
    return path


def reference_logits(ckpt_path: Path, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's model on uint8 images normalised the way training normalises them."""
    ckpt = load_checkpoint(ckpt_path)
    mean = torch.tensor(ckpt.config.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(ckpt.config.data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return load_model(ckpt, torch.device("cpu"))((images.float() / 255 - mean) / std)


def images(batch: int, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, 32, 32), generator=g, dtype=torch.uint8)


def check_onnx(ckpt: Path, out: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == NAMES
    data = load_checkpoint(ckpt).config.data
    assert json.loads(meta["mean"]) == list(data.mean)
    assert json.loads(meta["std"]) == list(data.std)
    assert meta["input_size"] == "32" and json.loads(meta["input"])["dtype"] == "uint8"
    for batch in (1, 3):  # neither is a batch size the export was checked with
        x = images(batch)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == (batch, len(NAMES))
        assert (got - reference_logits(ckpt, x)).abs().max() <= 1e-4


def load_torchscript(path: Path, *keys: str) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """The module and its _extra_files (torch.jit.load fills them in as bytes)."""
    extra = dict.fromkeys(keys, "")
    loaded = torch.jit.load(str(path), _extra_files=extra)
    return loaded, {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}


def check_torchscript(ckpt: Path, out: Path) -> None:
    keys = ("class_names", "mean", "std", "dataset_fingerprint")
    loaded, extra = load_torchscript(out / "model.pt", *keys)
    assert json.loads(extra["class_names"]) == NAMES
    assert json.loads(extra["std"]) == list(load_checkpoint(ckpt).config.data.std)
    assert extra["dataset_fingerprint"] == "f" * 64
    for batch in (1, 3):
        x = images(batch)
        with torch.no_grad():
            assert (loaded(x) - reference_logits(ckpt, x)).abs().max() <= 1e-4


def export_and_check(lwr, tmp_path: Path, fmt: str, *sets: str) -> Path:  # noqa: ANN001
    ckpt = make_checkpoint(tmp_path / "ckpt.safetensors", *sets)
    out = tmp_path / f"export-{fmt}"
    result = lwr("export", ckpt, "--format", fmt, "--out", out)
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model-card.md", "model.onnx" if fmt == "onnx" else "model.pt"]
    )
    (check_onnx if fmt == "onnx" else check_torchscript)(ckpt, out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging
    return out


def _clip_sets(tmp_path: Path) -> list[str]:
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(TINY_CLIP))
    return [
        f"model.name=clip:{tiny}",
        "model.cosine_classifier=true",
        "model.cosine_scale=25",
        "model.tuning=adaptformer",
    ]


FAST = {"small_cnn": []}
SLOW = {
    # resnet32 with the cosine head: both covered, one export's time
    "resnet32_cosine": [
        "model.name=resnet32",
        "model.cosine_classifier=true",
        "model.cosine_scale=16",
    ],
    "torchvision_mobilenet_v3_small": ["model.name=torchvision:mobilenet_v3_small"],
    "timm_resnet10t": ["model.name=timm:resnet10t"],
}


@needs_onnx
@pytest.mark.parametrize("name", list(FAST))
def test_onnx_matches_pytorch(name: str, lwr, tmp_path: Path) -> None:  # noqa: ANN001
    out = export_and_check(lwr, tmp_path, "onnx", *FAST[name])
    card = (out / "model-card.md").read_text()
    assert "(B, 3, 32, 32)" in card and "uint8" in card


@pytest.mark.parametrize("name", list(FAST))
def test_torchscript_matches_pytorch(name: str, lwr, tmp_path: Path) -> None:  # noqa: ANN001
    export_and_check(lwr, tmp_path, "torchscript", *FAST[name])


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("name", list(SLOW))
def test_backbones_export(name: str, lwr, tmp_path: Path) -> None:  # noqa: ANN001
    if name.startswith("timm"):
        pytest.importorskip("timm")
    for fmt in ("onnx", "torchscript"):
        export_and_check(lwr, tmp_path / fmt, fmt, *SLOW[name])


@pytest.mark.slow
@needs_onnx
def test_clip_adaptformer_exports(lwr, tmp_path: Path) -> None:  # noqa: ANN001
    """A frozen-base tiny CLIP ViT with AdaptFormer branches and a cosine head (random base:
    the checkpoint stores it whole)."""
    pytest.importorskip("open_clip")
    pytest.importorskip("peft")
    for fmt in ("onnx", "torchscript"):
        export_and_check(lwr, tmp_path / fmt, fmt, *_clip_sets(tmp_path))


def test_float_input_and_model_card_of_a_run(
    lwr,
    synthetic_data: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """A checkpoint in a run folder: the dataset (name, fingerprint, stored size) comes from
    the run's record, the card names the training command; --input float takes [0, 1]."""
    from lwrcli.data.manifest import read_manifest

    run = tmp_path / "run"
    sets = ("epochs=1", "model.width=8", "device=cpu", "eval_every=1")
    assert lwr(*train_args("synthetic-lt-bs-lwr", synthetic_data, run, *sets)).code == 0
    ckpt = run / "checkpoints" / "last.safetensors"
    # In-process the recorded argv is pytest's; put what a console-script run records there.
    env = json.loads((run / "environment.json").read_text())
    argv = ["/venv/bin/lwr", *train_args("synthetic-lt-bs-lwr", synthetic_data, run, *sets)]
    (run / "environment.json").write_text(json.dumps({**env, "argv": argv}))
    out = tmp_path / "ts"
    result = lwr("export", ckpt, "--format", "torchscript", "--out", out, "--input", "float")
    assert result.code == 0, result.err
    manifest = read_manifest(synthetic_data)
    loaded, extra = load_torchscript(out / "model.pt", "dataset", "dataset_fingerprint", "input")
    assert extra["dataset"] == manifest.name
    assert extra["dataset_fingerprint"] == manifest.fingerprint
    assert json.loads(extra["input"])["range"] == [0.0, 1.0]
    x = images(4, seed=3)
    data = load_checkpoint(ckpt).config.data
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = load_model(load_checkpoint(ckpt), torch.device("cpu"))((x / 255 - mean) / std)
        assert (loaded(x.float() / 255) - want).abs().max() <= 1e-4
    card = (out / "model-card.md").read_text()
    record = load_checkpoint(ckpt).metrics
    assert "synthetic-lt-bs-lwr" in card and manifest.fingerprint in card
    assert f"| test | {record['test_top1']:.4g} |" in card
    assert "geom_cos_max" in card and "<details>" in card
    counts = manifest.class_counts
    assert f"imbalance factor {max(counts) / min(counts):.4g}" in card
    assert f"trained by: `{shlex.join(['lwr', *argv[1:]])}`" in card


# --- bad inputs: exit 2, a message, nothing left behind -------------------------------------


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "ckpt.safetensors")


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_unknown_format(lwr, ckpt: Path) -> None:  # noqa: ANN001
    out = ckpt.parent / "out"
    result = lwr("export", ckpt, "--format", "tflite", "--out", out)
    assert result.code == 2 and "Unknown export format 'tflite'" in result.err
    _nothing_left(out)


def test_missing_checkpoint(lwr, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    result = lwr("export", tmp_path / "nope.safetensors", "--format", "torchscript", "--out", out)
    assert result.code == 2 and "does not exist" in result.err
    _nothing_left(out)


def test_non_empty_out_needs_overwrite(lwr, ckpt: Path) -> None:  # noqa: ANN001
    out = ckpt.parent / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = lwr("export", ckpt, "--format", "torchscript", "--out", out)
    assert result.code == 2 and "--overwrite" in result.err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = lwr("export", ckpt, "--format", "torchscript", "--out", out, "--overwrite")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["model-card.md", "model.pt"]
    # Issue 24: --overwrite replaces results only, never the folder of its own checkpoint.
    result = lwr("export", ckpt, "--format", "torchscript", "--out", ckpt.parent, "--overwrite")
    assert result.code == 2 and "not results" in result.err and ckpt.is_file()


def test_mismatch_fails_with_the_difference(
    lwr,
    ckpt: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """An export whose logits differ beyond the tolerance is refused and removed (a negative
    tolerance stands in for a wrong exporter: every real difference exceeds it)."""
    monkeypatch.setattr("lwrcli.use.export.TOLERANCE", -1.0)
    out = ckpt.parent / "out"
    result = lwr("export", ckpt, "--format", "torchscript", "--out", out)
    assert result.code == 2 and "max |logit difference|" in result.err
    _nothing_left(out)


class _Unexportable(torch.nn.Module):
    """A model whose forward uses an op neither ONNX exporter knows (modified Bessel I0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, len(NAMES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.special.i0(x).mean((2, 3)))


@needs_onnx
def test_exporter_failure_names_the_reason(
    lwr,
    ckpt: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setattr("lwrcli.use.export.load_model", lambda c, d: _Unexportable().eval())
    out = ckpt.parent / "out"
    result = lwr("export", ckpt, "--format", "onnx", "--out", out)
    assert result.code == 2
    assert "cannot export this model" in result.err and "i0" in result.err
    assert "\x1b[" not in result.err and "graph(" not in result.err + result.out
    _nothing_left(out)


def test_missing_extra_names_the_install(
    lwr,
    ckpt: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    out = ckpt.parent / "out"
    result = lwr("export", ckpt, "--format", "onnx", "--out", out)
    assert result.code == 2 and "pip install 'lwrcli[export]'" in result.err
    _nothing_left(out)


def test_unknown_dataset_needs_a_size(lwr, tmp_path: Path) -> None:  # noqa: ANN001
    ckpt = make_checkpoint(tmp_path / "ckpt.safetensors", "dataset=any")
    out = tmp_path / "out"
    result = lwr("export", ckpt, "--format", "torchscript", "--out", out)
    assert result.code == 2 and "--image-size" in result.err
    _nothing_left(out)
    result = lwr("export", ckpt, "--format", "torchscript", "--out", out, "--image-size", "32")
    assert result.code == 0, result.err


def test_help_has_an_example(lwr) -> None:  # noqa: ANN001
    result = lwr("export", "--help")
    assert result.code == 0 and "lwr export " in result.out and "--format onnx" in result.out


def test_synthetic_inputs_are_seeded() -> None:
    from lwrcli.use.export import check_inputs
    from lwrcli.use.export_contract import InputContract

    contract = InputContract("uint8", 8, None, (0.5,) * 3, (0.25,) * 3)  # type: ignore[arg-type]
    a, b = check_inputs(contract), check_inputs(contract)
    assert [x.shape[0] for x in a] == [2, 5]
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))
