"""head_init class_mean, zero-shot and test-time-ensemble evaluation against independent
computations on tiny data (a tiny open_clip ViT with random weights saved to a file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from jpegtree import write_list_dataset

from lwrcli.config import DataConfig, ModelConfig, TrainConfig
from lwrcli.data.arrays import load_arrays
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import read_manifest

open_clip = pytest.importorskip("open_clip")
# torchvision >= 0.29 announces its decoders moving to torchcodec; the test decodes by hand.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                       "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 2}}  # fmt: skip
MEAN = torch.tensor(open_clip.constants.OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(open_clip.constants.OPENAI_DATASET_STD).view(3, 1, 1)


@pytest.mark.parametrize("cosine", [True, False])
def test_class_mean_head_equals_independent_means(synthetic_data: Path, cosine: bool) -> None:
    from lwrcli.models import get_classifier
    from lwrcli.train.build import build_components
    from lwrcli.train.resolve import resolve_config

    head = {"name": "cosine" if cosine else "linear"}
    cfg = TrainConfig(model=ModelConfig(name="small_cnn", width=8, head=head,
                                        head_init="class_mean"),
                      device="cpu", batch_size=64, eval_batch_size=100,
                      amp="none")  # fp32 like the reference below  # fmt: skip
    device = torch.device("cpu")
    manifest = read_manifest(synthetic_data)
    cfg = resolve_config(cfg, device, manifest.storage, manifest.num_classes,
                         manifest.image_size).cfg  # fmt: skip
    parts = build_components(cfg, build_data(synthetic_data, cfg, device), device)
    model = parts.raw_model.eval()
    head = get_classifier(model)
    # Independently: the stored uint8 train images, normalised by hand, through the model
    # with the head's input captured; per-class means by a loop, then unit rows.
    images, labels = load_arrays(synthetic_data, "train")
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model((images.float() / 255 - mean) / std)
    hook.remove()
    feats = seen[0].double()
    expected = torch.stack([feats[labels == c].mean(0) for c in range(len(head.weight))])
    rows = F.normalize(expected, dim=1)
    torch.testing.assert_close(head.weight.double(), rows, atol=1e-5, rtol=0)
    if not cosine:
        assert torch.all(head.bias == 0)


@pytest.fixture(scope="module")
def clip_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import save_file

    from lwrcli.data.listfile import prepare_listfile

    root = tmp_path_factory.mktemp("zs")
    (root / "tiny.json").write_text(json.dumps(TINY))
    torch.manual_seed(3)
    clip = open_clip.CLIP(**TINY)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, root / "tiny.safetensors")
    lists = write_list_dataset(root / "raw", classes=4, per_class=(4, 1, 4))
    prepare_listfile("places-lt", root / "raw" / "images", root / "data",
                     train_list=lists["train"], val_list=lists["val"], test_list=lists["test"],
                     verify=False, progress=False)  # fmt: skip
    return {"root": root, "json": root / "tiny.json", "weights": root / "tiny.safetensors",
            "data": root / "data"}  # fmt: skip


def _independent_top1(setup: dict[str, Path], tte: bool) -> float:
    """Decode each test image, resize / crop by hand (torchvision functional ops), encode with
    open_clip's own towers, cosine with the class names' text embeddings, argmax."""
    from safetensors.torch import load_file
    from torchvision.io import decode_image
    from torchvision.transforms.v2 import functional as TF

    clip = open_clip.CLIP(**TINY)
    clip.load_state_dict(load_file(setup["weights"]))
    clip.eval()
    manifest = read_manifest(setup["data"])
    tok = open_clip.SimpleTokenizer(context_length=77)
    prompts = [f"a photo of a {n.replace('_', ' ')}." for n in manifest.class_names]
    with torch.no_grad():
        text = F.normalize(clip.encode_text(tok(prompts)), dim=1)
    correct, total = 0, 0
    for line in (setup["data"] / "test.txt").read_text().splitlines():
        rel, label = line.rsplit(maxsplit=1)
        image = decode_image(str(Path(manifest.image_root) / rel), mode="RGB")
        if tte:
            big = TF.resize(image, [32 + 24], antialias=True)
            crops = list(TF.five_crop(big, [32, 32]))
        else:
            crops = [TF.center_crop(TF.resize(image, [32], antialias=True), [32, 32])]
        x = torch.stack([(c.float() / 255 - MEAN) / STD for c in crops])
        with torch.no_grad():
            logits = 100.0 * F.normalize(clip.encode_image(x), dim=1) @ text.t()
        correct += int(logits.mean(0).argmax()) == int(label)
        total += 1
    return 100.0 * correct / total


@pytest.mark.parametrize("tte", [False, True])
def test_zero_shot_top1_equals_independent(lwr, clip_setup: dict[str, Path], tte: bool) -> None:
    out = clip_setup["root"] / f"zs-{tte}"
    args = ["eval", "--zero-shot", f"clip:{clip_setup['json']}", "--pretrained",
            clip_setup["weights"], "--data", clip_setup["data"], "--templates", "single",
            "--device", "cpu", "--out", out, "--json"]  # fmt: skip
    r = lwr(*args, *(["--tte"] if tte else []))
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["tte"] is tte and summary["checkpoint"] is None
    # --json writes 6 significant digits (issue 24).
    assert summary["top1"] == pytest.approx(_independent_top1(clip_setup, tte), rel=1e-5)
    assert (out / "per_class.csv").is_file() and (out / "summary.json").is_file()


def test_zero_shot_results_are_never_replaced_silently(
    lwr, clip_setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: the default folder (zero-shot-<arch>-<data>, -tte for the ensemble) is refused
    the second time, naming it; --overwrite replaces it."""
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--zero-shot", f"clip:{clip_setup['json']}", "--pretrained",
            clip_setup["weights"], "--data", clip_setup["data"], "--templates", "single",
            "--device", "cpu", "--confusion"]  # fmt: skip
    assert lwr(*args).code == 0
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("zero-shot-") and folder.name.endswith("-data")
    assert (folder / "confusion.csv").read_text().startswith("true\\predicted,")
    r = lwr(*args)
    assert r.code == 2 and f"The results folder {folder.name} already holds files" in r.err
    r = lwr(*args[:-1], "--overwrite")
    assert r.code == 0, r.err
    assert sorted(p.name for p in folder.iterdir()) == ["per_class.csv", "summary.json"]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_zero_shot_refuses_a_checkpoint_and_tte_refuses_arrays(
    lwr, clip_setup: dict[str, Path], synthetic_data: Path
) -> None:
    r = lwr("eval", "ckpt.safetensors", "--zero-shot", f"clip:{clip_setup['json']}",
            "--data", clip_setup["data"])  # fmt: skip
    assert r.code == 2 and "give no checkpoint" in r.err
    r = lwr("eval", "--zero-shot", f"clip:{clip_setup['json']}", "--data", synthetic_data,
            "--tte", "--device", "cpu")  # fmt: skip
    assert r.code == 2 and "is for large-image datasets" in r.err


def test_validation_pass_uses_tte(clip_setup: dict[str, Path]) -> None:
    """eval_tte in training: the eval loaders yield five crops per image, scored by mean
    logits (what score_splits records each epoch)."""
    from lwrcli.runtime.distributed import DistInfo
    from lwrcli.train.resolve import resolve_config
    from lwrcli.train.scoring import predict, score_splits
    from lwrcli.use.zeroshot import zero_shot_config

    cfg = zero_shot_config(f"clip:{clip_setup['json']}", pretrained=clip_setup["weights"],
                           templates="single", device="cpu", tte=True)  # fmt: skip
    device = torch.device("cpu")
    manifest = read_manifest(clip_setup["data"])
    # Resolved as evaluate_zero_shot does: the input size and normalisation are the model's.
    cfg = resolve_config(cfg, device, manifest.storage, manifest.num_classes,
                         manifest.image_size).cfg  # fmt: skip
    assert isinstance(cfg.data, DataConfig) and cfg.eval_tte
    data = build_data(clip_setup["data"], cfg, device, train=False)
    x, _ = next(iter(data.evals["test"]))
    assert x.shape[1:] == (5, 3, 32, 32)
    from lwrcli.models import build_model

    model = build_model(cfg.model, 4, class_names=data.manifest.class_names)
    scores = score_splits(model, data.evals, data.class_counts, device, "none", DistInfo())
    logits, _ = predict(model, data.evals["test"], device, "none", DistInfo())
    assert logits.shape == (16, 4)
    assert scores["test_top1"] == pytest.approx(_independent_top1(clip_setup, True), abs=1e-9)
