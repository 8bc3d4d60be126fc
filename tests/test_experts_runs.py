"""Multi-expert models end to end: the network (shared trunk, K branches, reduced widths), the
checkpoint holding every expert, the rules that refuse what makes no sense (exit 2, no run
folder), a bit-identical mid-epoch resume for RIDE and SADE, and every multi-expert preset
trained for one epoch on synthetic data, then evaluated, analyzed, used to predict and
exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from resume_scenario import cut_and_resume

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.config import list_presets, load_config
from lwrcli.data.arrays import load_arrays
from lwrcli.data.synthetic import prepare_synthetic
from lwrcli.errors import UserError
from lwrcli.models import build_model, get_classifiers
from lwrcli.models.experts import ExpertsNet
from lwrcli.train.run import train_run
from lwrcli.use.evaluate import load_model

RIDE = ["dataset=any", "model.name=resnet32", "model.resnet_width=4", "model.variant.name=experts"]
RIDE += ["model.variant.reduce_width=true", "model.head.name=cosine", "model.head.scale=30"]
RIDE += ["loss.name=ride", "loss.reweight=drw", "loss.drw_epoch=1", "device=cpu"]
SADE = [s for s in RIDE if not s.startswith("loss.")] + ["loss.name=sade"]
TINY = ["batch_size=8", "eval_every=1", "log_every=1", "lwr.enabled=true", "lwr.theta=0.0"]


def _cfg(sets: list[str]):
    return load_config("synthetic-lt-bs-lwr", overrides=[*sets, *TINY])


# --- the network ------------------------------------------------------------------------


def _widths(module: torch.nn.Module) -> set[int]:
    return {m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)}


def test_resnet32_experts_share_stage_one_and_reduce_the_rest() -> None:
    cfg = _cfg(RIDE).model
    model = build_model(cfg.model_copy(update={"resnet_width": 16}), 10)
    assert isinstance(model, ExpertsNet) and model.num_experts == 3
    assert model.lwr_heads == ["fc.0", "fc.1", "fc.2"] and model.lwr_head == "fc.0"
    assert len(get_classifiers(model)) == 3
    # RIDE's reduced CIFAR experts: 24 and 48 channels (32 and 64 full width)
    assert _widths(model.experts[1]) == {24, 48} and model.fc[2].weight.shape == (10, 48)
    assert _widths(model.trunk) == {16}
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        z = model.expert_logits(x)
        assert z.shape == (4, 3, 10) and torch.equal(model(x), z.mean(1))
    full = build_model(cfg.model_copy(update={"resnet_width": 16, "variant": cfg.variant.model_copy(
        update={"reduce_width": False, "shared_stages": 2})}), 10)  # fmt: skip
    assert full.fc[0].weight.shape == (10, 64)
    assert _widths(full.trunk) == {16, 32}


def test_resnext50_reduced_experts_are_rides() -> None:
    cfg = load_config("imagenet-lt-sade").model
    model = build_model(cfg, 7)
    # layer3-4 per expert at 192 / 384 planes (x4 expansion: 1536 features); stem, layer1-2 shared
    assert model.fc[0].weight.shape == (7, 1536) and len(model.trunk.layers) == 2
    assert model.experts[0][1][0].conv3.out_channels == 1536
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7)


# --- rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, message",
    [
        ([s for s in RIDE if not s.startswith("loss.")] + ["loss.name=ce"], "expert loss"),
        ([s for s in RIDE if "variant" not in s], "set model.variant.name=experts"),
        ([*[s for s in RIDE if "head.scale" not in s], "model.head.name=linear"], "scale=30"),
        ([*RIDE, "model.head.scale=25"], "model.head.scale=30"),
        ([*SADE, "model.variant.num_experts=4"], "defined for 3 experts"),
        ([*SADE, "loss.name=balpoe", "loss.taus=[0,2]"], "defined for 2 experts"),
        ([*SADE, "model.name=small_cnn"], "is not one"),
        ([*SADE, "model.variant.shared_stages=3"], "at most 2 can be shared"),
        ([*SADE, "max_norm.radius=1.0"], "max_norm"),
        ([*SADE, "init.reset_classifier=true"], "one-stage"),
        ([*SADE, "mixing.mixup_alpha=0.4", "loss.name=ride", "loss.s=30"], "soft targets"),
        ([*[s for s in SADE if "head.scale" not in s], "model.head.name=etf"], "linear or cosine"),
    ],
)
def test_combinations_that_make_no_sense_are_refused(
    lwr, small16: Path, tmp_path: Path, sets: list[str], message: str
) -> None:
    args = ["train", "--preset", "synthetic-lt-bs", "--data", small16, "--out", tmp_path / "r"]
    for s in [*sets, "epochs=1", "batch_size=8"]:
        args += ["--set", s]
    result = lwr(*args)
    assert result.code == 2, result.err
    assert message in result.err
    assert not (tmp_path / "r").exists()


def test_reduced_experts_cannot_start_from_pretrained_weights(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    plain = build_model(load_config("cifar100-lt-ir100-bs").model, 5)
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(weights))
    cfg = _cfg([*SADE, f"model.pretrained={weights}", "model.resnet_width=16"]).model
    with pytest.raises(UserError, match="reduce_width=false"):
        build_model(cfg, 5)
    full = cfg.model_copy(
        update={"variant": cfg.variant.model_copy(update={"reduce_width": False})}
    )
    model = build_model(full, 5)  # full width: each expert starts from the pretrained stages
    assert torch.equal(model.experts[2][0].conv1.weight, plain.layers[5].conv1.weight)


# --- checkpoint and resume -----------------------------------------------------------------


def test_the_checkpoint_stores_every_expert(small16: Path, tmp_path: Path) -> None:
    train_run(_cfg([*SADE, "epochs=1"]), small16, tmp_path / "r")
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert ckpt.classifier_keys == ["fc.0.weight", "fc.1.weight", "fc.2.weight"]
    assert ckpt.classifier_key == "fc.0.weight"
    assert {k.split(".")[1] for k in ckpt.state if k.startswith("experts.")} == {"0", "1", "2"}
    model = load_model(ckpt, torch.device("cpu"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt.state[key]), key
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["geom_heads"] == 3 and record["lwr"] > 0
    assert {"geom_r_heads_mean", "geom_expert_cos", "geom_r"} <= set(record)


@pytest.mark.parametrize("name, sets", [("ride", RIDE), ("sade", SADE)])
def test_mid_epoch_resume_is_bit_identical(
    name: str, sets: list[str], small16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg([*sets, "epochs=2", "checkpoint_every_steps=2"])
    cut_and_resume(cfg, small16, tmp_path, monkeypatch, holds="fc.2.weight")


def test_two_micro_batches_give_the_whole_batchs_gradient_in_float64(small16: Path) -> None:
    """The expert losses are means over samples (RIDE's KL 'batchmean' too): one step on the
    whole batch and on its two micro-batches give the same gradient (GroupNorm, float64)."""
    from lwrcli.data.loading import build_data
    from lwrcli.train.build import build_components
    from lwrcli.train.engine import Trainer
    from lwrcli.train.resolve import resolve_config

    dev = torch.device("cpu")
    grads = []
    for accum in (1, 2):
        sets = [*RIDE, "loss.reweight=none", "model.norm=group", "channels_last=false"]
        cfg = _cfg([*sets, "batch_size=16", f"accum_steps={accum}"])
        data = build_data(small16, cfg, dev)
        cfg = resolve_config(cfg, dev, num_classes=5).cfg
        parts = build_components(cfg, data, dev)
        parts.raw_model.double()
        trainer = Trainer(cfg, parts, dev, run_dir=None)
        trainer.optimizer.step = lambda: None  # type: ignore[method-assign]
        x, y = next(iter(data.train))
        trainer.train_step(x.double(), y, 1.0, None)
        grads.append(torch.cat([p.grad.flatten() for p in parts.raw_model.parameters()]))
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-12


# --- every multi-expert preset, one epoch, then every command that uses a checkpoint ---------

PRESETS = [n for n in list_presets() if load_config(n).model.variant.name == "experts"]
LARGE = [n for n in PRESETS if n.startswith("imagenet-lt")]


@pytest.fixture(scope="module")
def even(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 classes, 77 train images (batches of 16, the last of 13: no 2-image batch, whose
    BatchNorm statistics blow RIDE's ResNeXt up), 32-px images, and the test images as PNG
    files for predict."""
    out = tmp_path_factory.mktemp("even") / "data"
    prepare_synthetic(out, num_classes=5, n_max=30, test_per_class=2, imbalance_factor=5, seed=3)
    images, _ = load_arrays(out, "test")
    pngs = out.parent / "pngs"
    pngs.mkdir()
    for i in range(len(images)):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(pngs / f"{i:02d}.png")
    return out


def _train_and_use(lwr, preset: str, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["dataset=any", "epochs=1", "batch_size=16", "eval_batch_size=16", "device=cpu"]
    sets += ["data.num_workers=0", "model.resnet_width=4", "checkpoint_every_minutes=0"]
    args: list[object] = ["train", "--preset", preset, "--data", data, "--out", run]
    for s in sets:
        args += ["--set", s]
    r = lwr(*args)
    assert r.code == 0, r.err
    ckpt = run / "checkpoints" / "last.safetensors"
    r = lwr("eval", ckpt, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert len(summary["experts"]) == 3 and summary["aggregation"]["rule"] == "uniform"
    r = lwr("analyze-weights", ckpt, "--out", tmp_path / "analysis", "--html", tmp_path / "a.html")
    assert r.code == 0, r.err
    page = (tmp_path / "a.html").read_text(encoding="utf-8")  # a heat map per expert
    assert page.count("Cosines: run/last · expert") == 3
    analysis = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    assert len(analysis["checkpoints"][0]["experts"]) == 3
    assert len(analysis["checkpoints"][0]["expert_pairs"]) == 3
    r = lwr("predict", ckpt, data.parent / "pngs", "--out", tmp_path / "p.csv", "--workers", "0")
    assert r.code == 0, r.err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 11
    r = lwr("export", ckpt, "--format", "torchscript", "--out", tmp_path / "export")
    assert r.code == 0, r.err


# One recipe in the quick tier; the others (10-30 s each on 2 cores) with the slow runs.
QUICK = "cifar100-lt-ir100-sade-lwr"
CIFAR = [p if p == QUICK else pytest.param(p, marks=pytest.mark.slow) for p in PRESETS]
CIFAR = [p for p in CIFAR if (p if isinstance(p, str) else p.values[0]) not in LARGE]


@pytest.mark.parametrize("preset", CIFAR)
def test_each_cifar_preset_trains_evaluates_analyzes_predicts_exports(
    lwr, preset: str, even: Path, tmp_path: Path
) -> None:
    _train_and_use(lwr, preset, even, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", LARGE)
def test_each_imagenet_preset_trains_evaluates_analyzes_predicts_exports(
    lwr, preset: str, even: Path, tmp_path: Path
) -> None:
    """The recipe's own ResNeXt-50 experts on the 32-px synthetic images (about a minute)."""
    _train_and_use(lwr, preset, even, tmp_path)


def test_the_presets_are_the_family() -> None:
    want = {
        f"{d}-{m}" for d in ("cifar100-lt-ir100", "imagenet-lt") for m in ("ride", "sade", "balpoe")
    }
    want.add("cifar10-lt-ir100-balpoe")
    assert set(PRESETS) == want | {f"{n}-lwr" for n in want}
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.model.head.name == "cosine" and cfg.model.head.scale == 30.0
        assert cfg.lwr.enabled == name.endswith("-lwr")
