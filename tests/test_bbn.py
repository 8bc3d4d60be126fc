"""BBN (Zhou et al., CVPR 2020): two branches, uniform and reversed samplers, cumulative
learning. Each property is checked against an independent computation (numpy, float64)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args
from resume_scenario import cut_and_resume
from safetensors.torch import load_file

from lwrcli.config import ModelConfig, TrainConfig, load_config, loss_section
from lwrcli.data.loading import DataBundle, build_data
from lwrcli.data.manifest import read_manifest
from lwrcli.data.paired import PairedLoader, cumulative_alpha
from lwrcli.data.samplers import class_probabilities, epoch_indices
from lwrcli.errors import UserError
from lwrcli.methods.losses import build_loss
from lwrcli.models import build_model, get_classifier
from lwrcli.models.bbn import BBNNet
from lwrcli.train.build import build_components, train_loader_hook
from lwrcli.train.engine import Trainer
from lwrcli.train.resolve import resolve_config
from lwrcli.train.run import train_run
from lwrcli.train.runlog import read_metrics

PRESET = "cifar100-lt-ir100-bbn"
TINY = ["dataset=any", "batch_size=8", "log_every=1", "device=cpu", "eval_every=1"]


JPEG_SETS = ["data.image_size=16", "data.resize=18", "data.num_workers=0"]


# --- the cumulative-learning weight -----------------------------------------------------------
@pytest.mark.parametrize(
    "epochs, div", [(200, 200), (4, 4), (90, 100), (180, 200), (100, 100), (7, 7)]
)
def test_alpha_is_bbn_parabolic_decay(epochs: int, div: int) -> None:
    # BBN's Combiner: l = 1 - ((epoch - 1) / div_epoch) ** 2, epoch 1-based, div_epoch the
    # number of epochs except 100 * (E // 100 + 1) for E in {90, 180}.
    for epoch1 in sorted({1, 2, epochs // 2, epochs - 1, epochs}):
        expect = 1.0 - ((epoch1 - 1) / div) ** 2
        assert cumulative_alpha(epoch1 - 1, epochs) == pytest.approx(expect, abs=1e-15)
    assert cumulative_alpha(0, epochs) == 1.0


def test_training_follows_the_alpha_schedule(
    small16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a real run, every step of epoch T mixes features with α(T) and targets with the
    same α: y = α e_{y_c} + (1 - α) e_{y_r}."""
    seen: list[tuple[int, float, torch.Tensor]] = []
    original = Trainer.train_step

    def step(self: Trainer, x, y, t, w):  # type: ignore[no-untyped-def]
        seen.append((int(np.ceil(t)) - 1, float(self.parts.raw_model.alpha), y.clone()))
        assert x.shape[1:] == (2, 3, 16, 16)
        return original(self, x, y, t, w)

    monkeypatch.setattr(Trainer, "train_step", step)
    cfg = load_config(PRESET, overrides=[*TINY, "epochs=3", "eval_every=0"])
    train_run(cfg, small16, tmp_path / "run")
    assert sorted({e for e, _, _ in seen}) == [0, 1, 2]
    for epoch, alpha, y in seen:
        expect = 1.0 - (epoch / 3) ** 2
        assert alpha == pytest.approx(expect, abs=1e-7)
        assert torch.allclose(y.sum(1), torch.ones(len(y)))
        top = torch.sort(y, dim=1, descending=True).values
        # Same class in both branches: a one-hot row; otherwise the two weights α, 1 - α.
        same = top[:, 0] > 1.0 - 1e-6
        two = torch.stack([top[:, 0], top[:, 1]], 1)
        want = torch.tensor(sorted([expect, 1 - expect], reverse=True))
        assert torch.allclose(two[~same], want.expand_as(two[~same]), atol=1e-6)


# --- the two samplers ---------------------------------------------------------------------
def test_reversed_sampler_probabilities_and_frequencies() -> None:
    counts = np.array([500, 120, 40, 9, 3], dtype=np.float64)
    inv = 1.0 / counts
    expect = inv / inv.sum()  # BBN: w_i = N_max / N_i, normalised
    got = class_probabilities("reversed", torch.tensor(counts)).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    labels = torch.repeat_interleave(torch.arange(5), torch.tensor(counts, dtype=torch.int64))
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([epoch_indices("reversed", labels, g, 0.0) for _ in range(60)])
    freq = np.bincount(labels[draws].numpy(), minlength=5) / len(draws)
    sd = np.sqrt(expect * (1 - expect) / len(draws))
    assert np.all(np.abs(freq - expect) < 5 * sd), (freq, expect)
    # Within a class, images are uniform: the tail class's 3 images each about 1/3.
    few = draws[labels[draws] == 4]
    share = np.bincount(few.numpy() - int(counts[:4].sum()), minlength=3) / len(few)
    assert np.all(np.abs(share - 1 / 3) < 0.05)


def _train_data(data: Path, cfg: TrainConfig, device: torch.device) -> DataBundle:
    """The run's data as `lwr train` builds it: each method's say on the training loader."""
    classes = read_manifest(data).num_classes
    return build_data(data, cfg, device, train_wrap=train_loader_hook(cfg, classes))


def _plain_and_paired(data: Path, sets: list[str]) -> tuple[object, PairedLoader]:
    plain_cfg = load_config(PRESET, overrides=[*TINY, *sets, "model.variant.name=plain"])
    bbn_cfg = load_config(PRESET, overrides=[*TINY, *sets])
    cpu = torch.device("cpu")
    plain = _train_data(data, plain_cfg, cpu).train
    paired = _train_data(data, bbn_cfg, cpu).train
    assert isinstance(paired, PairedLoader)
    return plain, paired


@pytest.mark.parametrize("source, sets", [("small16", []), ("jpegs", JPEG_SETS)])
def test_each_branch_sees_its_own_sampler(
    source: str, sets: list[str], request: pytest.FixtureRequest
) -> None:
    data = request.getfixturevalue(source)
    plain, paired = _plain_and_paired(data, [*sets, "epochs=4"])
    counts = np.array(paired_counts(paired), dtype=np.float64)
    rev_labels: list[int] = []
    for epoch in range(3):
        plain.set_epoch(epoch)  # type: ignore[attr-defined]
        paired.set_epoch(epoch)
        alpha = cumulative_alpha(epoch, 4)
        for (xp, yp), (x, y) in zip(plain, paired, strict=True):  # type: ignore[call-overload]
            # Conventional branch: exactly the plain run's instance-sampled batch.
            assert torch.equal(x[:, 0], xp)
            assert not torch.equal(x[:, 1], x[:, 0])  # a different batch each step
            conv = torch.nn.functional.one_hot(yp, len(counts)).float()
            if alpha < 1.0:
                rev = (y - alpha * conv) / (1.0 - alpha)
                assert torch.allclose(rev.sum(1), torch.ones(len(y)), atol=1e-5)
                rev_labels += rev.argmax(1).tolist()
            else:
                assert torch.equal(y, conv)
    # The reversed branch's classes lean to the tail: their frequencies against p ∝ 1/n.
    inv = 1.0 / counts
    expect = inv / inv.sum()
    freq = np.bincount(rev_labels, minlength=len(counts)) / len(rev_labels)
    sd = np.sqrt(expect * (1 - expect) / len(rev_labels))
    assert np.all(np.abs(freq - expect) < 5 * sd + 1e-9), (freq, expect)
    assert freq[-1] > counts[-1] / counts.sum()  # the tail is drawn far above its share


def paired_counts(paired: PairedLoader) -> list[int]:
    conv = paired.conventional
    labels = getattr(conv, "labels", None)
    if labels is None:  # the worker pipeline's dataset
        labels = conv.loader.dataset.labels  # type: ignore[attr-defined]
    return torch.bincount(labels).tolist()


def test_reversed_loader_is_seeded_apart_from_the_conventional(small16: Path) -> None:
    _, paired = _plain_and_paired(small16, [])
    # Both branches index one device-resident copy of the images.
    assert paired.reversed.images.data_ptr() == paired.conventional.images.data_ptr()
    assert paired.reversed.sampler == "reversed" and paired.conventional.sampler == "instance"
    paired.set_epoch(0)
    batches = list(paired)
    assert len(batches) == len(paired) == -(-sum(paired_counts(paired)) // 8)
    again = _plain_and_paired(small16, [])[1]
    again.set_epoch(0)
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # deterministic per seed


# --- the model and the loss --------------------------------------------------------------------
def _net(num_classes: int = 6) -> BBNNet:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet32", variant={"name": "bbn"}), num_classes)
    assert isinstance(model, BBNNet)
    return model


def test_bbn_net_structure_and_classifier() -> None:
    model = _net()
    head = get_classifier(model)
    assert head is model.fc and tuple(head.weight.shape) == (6, 128)
    # ResNet-32 = stem + 15 blocks: 14 shared, the last one twice (different initial weights).
    assert len(model.trunk.layers) == 14
    assert not torch.equal(model.cb_block.conv1.weight, model.rb_block.conv1.weight)
    assert "alpha" not in model.state_dict()  # never in a checkpoint


def test_training_forward_mixes_branch_features_as_bbn() -> None:
    model = _net().eval()  # batch-norm on running statistics: branch calls are comparable
    torch.manual_seed(1)
    xc, xr = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    model.set_alpha(0.3)
    with torch.no_grad():
        got = model(torch.stack([xc, xr], 1)).double()
        fc = model.branch_features(xc, "cb").double()
        fr = model.branch_features(xr, "rb").double()
        w, b = model.fc.weight.double(), model.fc.bias.double()
    expect = (2 * torch.cat([0.3 * fc, 0.7 * fr], 1)) @ w.T + b
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_inference_uses_alpha_one_half() -> None:
    """Eval: one image through both branches, features weighted α = 0.5 (with BBN's factor
    2: unweighted), whatever α training last used."""
    model = _net().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.set_alpha(0.9)
        a = model(x)
        model.set_alpha(0.1)
        b = model(x)
        model.set_alpha(0.5)
        pair = model(torch.stack([x, x], 1))  # the training formula at α = 0.5
        feats = torch.cat([model.branch_features(x, "cb"), model.branch_features(x, "rb")], 1)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, pair, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, model.fc(feats), rtol=1e-5, atol=1e-5)


def _np_ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    return lse - z[np.arange(len(y)), y]


@pytest.mark.parametrize("loss", ["ce", "bs", "la"])
def test_loss_equals_alpha_mixture_of_two_cross_entropies(loss: str) -> None:
    rng = np.random.default_rng(0)
    counts = np.array([300, 80, 20, 7, 2, 1], dtype=np.float64)
    n, c, alpha = 32, len(counts), 0.37
    z = rng.normal(size=(n, c)) * 3
    yc, yr = rng.integers(0, c, n), rng.integers(0, c, n)
    # Independent: α CE(z', y_c) + (1 - α) CE(z', y_r), z' the loss's adjusted logits.
    shift = {"ce": 0.0, "bs": np.log(counts), "la": np.log(counts / counts.sum())}[loss]
    zz = z + shift
    expect = np.mean(alpha * _np_ce(zz, yc) + (1 - alpha) * _np_ce(zz, yr))
    fn = build_loss(loss_section(name=loss), torch.tensor(counts))
    onehot = np.eye(c)
    target = torch.tensor(alpha * onehot[yc] + (1 - alpha) * onehot[yr])
    got = fn(torch.tensor(z), target)
    assert float(got) == pytest.approx(expect, rel=1e-6)


# --- resume, CLI, refusals ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, sets",
    [("small16", []), pytest.param("jpegs", JPEG_SETS, marks=pytest.mark.slow)],
)
def test_mid_epoch_resume_is_bit_exact(
    source: str,
    sets: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    data = request.getfixturevalue(source)
    cfg = load_config(PRESET, overrides=[*TINY, *sets, "epochs=2", "checkpoint_every_steps=2"])
    cut_and_resume(cfg, data, tmp_path, monkeypatch, holds="rb_block.")


def test_cli_train_eval_analyze_with_lwr(lwr, small16: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # θ = -1: every pair is above the margin, so LWR really acts on the (C, 2d) head.
    sets = [*TINY, "epochs=2", "lwr.theta=-1.0"]
    r = lwr(*train_args(f"{PRESET}-lwr", small16, run, *sets))
    assert r.code == 0, r.err
    lines = read_metrics(run / "metrics.jsonl")
    assert lines[-1]["lwr"] > 0 and lines[-1]["test_top1"] is not None
    ckpt = run / "checkpoints" / "last.safetensors"
    assert tuple(load_file(str(ckpt))["fc.weight"].shape) == (5, 128)
    r = lwr("eval", ckpt, "--data", small16, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["top1"] == pytest.approx(lines[-1]["test_top1"])
    r = lwr("analyze-weights", ckpt, "--data", small16, "--out", tmp_path / "an")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "an" / "summary.json").read_text())


@pytest.mark.parametrize(
    "sets, expect",
    [
        (["model.name=small_cnn"], "small_cnn has none"),
        (["model.name=torchvision:mobilenet_v3_small"], "not a ResNet"),
        (["loss.name=focal"], "soft target"),
        (["data.sampler=class_balanced"], "data.sampler=instance"),
        (["mixing.mixup_alpha=1"], "mixup/CutMix and label smoothing"),
        (["label_smoothing.epsilon=0.1"], "mixup/CutMix and label smoothing"),
    ],
)
def test_unsupported_setups_exit_2(
    lwr, small16: Path, tmp_path: Path, sets: list[str], expect: str
) -> None:
    r = lwr(*train_args(PRESET, small16, tmp_path / "run", *TINY, *sets))
    assert r.code == 2, r.err
    assert expect in r.err and "Traceback" not in r.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_to_bbn_refuses_a_non_resnet_directly() -> None:
    with pytest.raises(UserError, match="not a ResNet"):
        build_model(ModelConfig(name="torchvision:mobilenet_v3_small", variant={"name": "bbn"}), 4)


def test_torchvision_resnet_becomes_two_branches() -> None:
    model = build_model(ModelConfig(name="torchvision:resnet18", variant={"name": "bbn"}), 7)
    assert isinstance(model, BBNNet)
    assert tuple(get_classifier(model).weight.shape) == (7, 1024)
    assert len(model.trunk.layer4) == 1  # resnet18's layer4 has 2 blocks: 1 shared, 1 per branch
    model.train().set_alpha(0.25)
    out = model(torch.randn(2, 2, 3, 32, 32))
    assert out.shape == (2, 7)


def test_components_register_the_alpha_hook(small16: Path) -> None:
    cpu = torch.device("cpu")
    cfg = load_config(PRESET, overrides=[*TINY, "epochs=10"])
    manifest = read_manifest(small16)
    cfg = resolve_config(cfg, cpu, manifest.storage, manifest.num_classes, manifest.image_size).cfg
    data = _train_data(small16, cfg, cpu)
    assert isinstance(data.train, PairedLoader)
    parts = build_components(cfg, data, cpu)
    assert len(parts.before_epoch) == 1
    for epoch in (0, 3, 9):
        parts.before_epoch[0](epoch)
        assert float(parts.raw_model.alpha) == pytest.approx(1 - (epoch / 10) ** 2)
