"""mixup / CutMix (lwrcli.methods.mixing) and label smoothing (lwrcli.methods.label_smoothing):
soft targets checked against closed
forms recovered from the mixed images themselves, MiSLAS's label-aware ε re-computed in numpy,
seeded reproducibility, refusals, and both data pipelines end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args

from lwrcli.config import load_config, loss_section
from lwrcli.config.slots import methods_of
from lwrcli.methods.label_smoothing import (
    LabelSmoothingConfig,
    Smoother,
    label_aware_epsilon,
    smooth,
    smoothing_epsilon,
)
from lwrcli.methods.losses import build_loss, soft_target_losses
from lwrcli.methods.mixing import BatchMixer

C = 7  # classes; the batch below has N = C distinct labels, so every target is traceable


def _batch(n: int = C, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 3, hw, hw, generator=g, dtype=torch.float64)
    return x, torch.arange(n) % C


def _recover_mixup(x: torch.Tensor, xm: torch.Tensor) -> list[tuple[int, int, float]]:
    """For every mixed row: the pair (a, b) and λ with xm = λ x_a + (1 - λ) x_b, by least
    squares over all ordered pairs (random images: exactly one pair fits)."""
    flat, out = x.flatten(1), []
    for row in xm.flatten(1):
        best = None
        for a in range(len(x)):
            for b in range(len(x)):
                if a == b:
                    continue
                d = flat[a] - flat[b]  # row - x_b = λ (x_a - x_b)
                lam = float((row - flat[b]) @ d / (d @ d))
                res = float((row - flat[b] - lam * d).norm())
                if best is None or res < best[0]:
                    best = (res, a, b, lam)
        assert best is not None and best[0] < 1e-9, "no pair of inputs explains a mixed image"
        out.append(best[1:])
    return out


def test_mixup_targets_are_the_closed_form_of_the_images_mix() -> None:
    x, y = _batch()
    mixer = BatchMixer(C, mixup_alpha=1.0, seed=3)
    xm, target = mixer(x, y, epoch=2, step=5)
    assert target.shape == (C, C) and target.dtype == torch.float32
    torch.testing.assert_close(target.sum(1), torch.ones(C), rtol=0, atol=1e-6)
    pairs = _recover_mixup(x, xm)
    lams = {round(min(lam, 1 - lam), 9) for _, _, lam in pairs}
    assert len(lams) == 1, "mixup draws one λ per batch"
    for j, (a, b, lam) in enumerate(pairs):
        expected = lam * np.eye(C)[int(y[a])] + (1 - lam) * np.eye(C)[int(y[b])]
        np.testing.assert_allclose(target[j].numpy(), expected, atol=1e-6)
    # Pairs chain a permutation of the batch (each image in exactly two mixes), no resampling.
    assert sorted(i for a, b, _ in pairs for i in (a, b)) == sorted(list(range(C)) * 2)


def test_cutmix_lambda_is_the_pasted_area_fraction() -> None:
    x, y = _batch(hw=16)
    mixer = BatchMixer(C, cutmix_alpha=1.0, seed=1)
    for step in range(6):  # several boxes, clipped at the border or not
        xm, target = mixer(x, y, epoch=0, step=step)
        torch.testing.assert_close(target.sum(1), torch.ones(C), rtol=0, atol=1e-6)
        for j in range(C):
            # The image whose pixels fill most of the row is a; the pasted box comes from b.
            same = [(xm[j] == x[i]).all(0) for i in range(C)]  # (H, W) masks
            a = max(range(C), key=lambda i: int(same[i].sum()))
            box = ~same[a]
            area = float(box.float().mean())
            if area > 0:
                b = next(i for i in range(C) if i != a and bool(same[i][box].all()))
                rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
                h, w = len(rows), len(cols)
                assert int(box.sum()) == h * w, "the pasted region is a rectangle"
            else:
                b = a
            expected = (1 - area) * np.eye(C)[int(y[a])] + area * np.eye(C)[int(y[b])]
            np.testing.assert_allclose(target[j].numpy(), expected, atol=1e-6)


def test_same_position_same_mix_and_the_global_rng_untouched() -> None:
    x, y = _batch()
    a = BatchMixer(C, mixup_alpha=0.4, cutmix_alpha=1.0, seed=9)
    b = BatchMixer(C, mixup_alpha=0.4, cutmix_alpha=1.0, seed=9)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = a(x, y, 4, 17)
    assert torch.equal(torch.get_rng_state(), state), "mixing consumed the training RNG"
    b(x, y, 0, 0)  # other batches in between change nothing
    again = b(x, y, 4, 17)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = a(x, y, 4, 18)
    assert not torch.equal(first[1], other[1])
    rank1 = BatchMixer(C, mixup_alpha=0.4, cutmix_alpha=1.0, seed=9, rank=1)(x, y, 4, 17)
    assert not torch.equal(first[1], rank1[1]), "each process mixes its own part differently"


def test_mix_prob_and_switch_prob_choose_as_configured() -> None:
    x, y = _batch()
    never = BatchMixer(C, mixup_alpha=1.0, mix_prob=0.0)
    assert not never.mixes
    xm, t = never(x, y, 0, 0)
    assert torch.equal(xm, x) and torch.equal(t, torch.eye(C)[y])
    # CutMix only (switch 1): every mixed row keeps most pixels of one image exactly.
    cut = BatchMixer(C, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0, seed=2)
    for step in range(4):
        xm, _ = cut(x, y, 0, step)
        assert all(any(bool((xm[j] == x[i]).any()) for i in range(C)) for j in range(C))
    # Probability 0.5 of mixing: over 200 batches about half are plain permutations.
    half = BatchMixer(C, mixup_alpha=1.0, mix_prob=0.5, seed=4)
    plain = sum(int(half(x, y, 0, s)[1].max() == 1.0) for s in range(200))
    assert 70 < plain < 130


# Losses that read more of the step than its logits (experts, views) have their own tests.
@pytest.mark.parametrize(
    "name",
    [n for n in soft_target_losses() if not methods_of("loss")[n].loss_class.needs_model_outputs],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_through_the_mixing_path_with_mixing_off_is_the_hard_label_loss(
    name: str, weighted: bool
) -> None:
    """Mixup configured but never drawn (mix_prob tiny): the batch is only reordered and the
    targets are one-hot, so the loss equals the hard-label loss on the original batch."""
    counts = [50, 30, 20, 10, 6, 4, 2]
    loss = build_loss(loss_section(name=name), counts)
    x, y = _batch()
    w = torch.linspace(0.5, 2.0, C, dtype=torch.float32) if weighted else None
    head = torch.nn.Linear(3 * 8 * 8, C).double()
    mixer = BatchMixer(C, mixup_alpha=1.0, mix_prob=1e-12, seed=0)
    xm, target = mixer(x, y, 0, 0)
    assert not torch.equal(xm, x)  # reordered ...
    assert set(target.sum(0).tolist()) == {1.0} and target.max() == 1.0  # ... one-hot
    with torch.no_grad():
        soft = loss(head(xm.flatten(1)), target, w)
        hard = loss(head(x.flatten(1)), y, w)
    assert float(soft) == pytest.approx(float(hard), rel=1e-6)
    # Smoothing of zero through the same path: also the hard loss.
    zero = Smoother(torch.zeros(C, dtype=torch.float64), C)
    xs, ts = zero(x, y, 0, 0)
    with torch.no_grad():
        again = loss(head(xs.flatten(1)), ts, w)
    assert float(again) == pytest.approx(float(hard), rel=1e-6)


# --- label smoothing ----------------------------------------------------------------------------


def mislas_smooth(counts: list[int], head: float, tail: float, shape: str, power=None):
    """MiSLAS's LabelAwareSmoothing.__init__ (methods.py), transcribed in numpy."""
    n_1, n_k = max(counts), min(counts)
    n = np.array(counts)
    if shape == "concave":
        return tail + (head - tail) * np.sin((n - n_k) * np.pi / (2 * (n_1 - n_k)))
    if shape == "linear":
        return tail + (head - tail) * (n - n_k) / (n_1 - n_k)
    if shape == "convex":
        return head + (head - tail) * np.sin(1.5 * np.pi + (n - n_k) * np.pi / (2 * (n_1 - n_k)))
    return tail + (head - tail) * np.power((n - n_k) / (n_1 - n_k), power)


@pytest.mark.parametrize("shape", ["concave", "linear", "convex", "exp"])
def test_label_aware_epsilon_equals_mislas_formula(shape: str) -> None:
    counts = [500, 321, 200, 97, 60, 33, 5]
    ours = label_aware_epsilon(counts, 0.4, 0.1, shape, 2.0).numpy()
    np.testing.assert_allclose(ours, mislas_smooth(counts, 0.4, 0.1, shape, 2.0), rtol=1e-12)
    assert ours[0] == pytest.approx(0.4) and ours[-1] == pytest.approx(0.1)
    section = LabelSmoothingConfig(epsilon=0.4, tail=0.1, shape=shape, power=2.0)
    eps = smoothing_epsilon(section, counts)
    assert eps is not None
    np.testing.assert_allclose(eps.numpy(), ours)


def test_label_aware_smoothing_with_ce_is_mislas_loss() -> None:
    """CE on our smoothed targets = MiSLAS's (1 - ε_y) NLL + ε_y mean_c(-log p_c), in float64."""
    counts = [500, 321, 200, 97, 60, 33, 5]
    eps = label_aware_epsilon(counts, 0.3, 0.0, "concave")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(11, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (11,), generator=g)
    _, target = Smoother(eps, C)(torch.zeros(11, 1), y, 0, 0)
    ours = -(target.double() * torch.log_softmax(z, 1)).sum(1).mean()
    logp = z.numpy() - np.log(np.exp(z.numpy()).sum(1, keepdims=True))
    e = mislas_smooth(counts, 0.3, 0.0, "concave")[y.numpy()]
    nll = -logp[np.arange(11), y.numpy()]
    ref = ((1 - e) * nll + e * (-logp.mean(1))).mean()
    assert float(ours) == pytest.approx(ref, rel=1e-6)


def test_smoothing_composes_linearly_with_mixed_targets() -> None:
    eps = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    s = smooth(q, eps)
    eye = torch.eye(3, dtype=torch.float64)
    per_class = eye * (1 - eps)[:, None] + (eps / 3)[:, None]  # row c: smoothed one-hot of c
    torch.testing.assert_close(s, q @ per_class)
    torch.testing.assert_close(s.sum(1), torch.ones(2, dtype=torch.float64))


def _batch_transforms(cfg, class_counts: list[int]) -> list:
    """The batch transforms the run's training tricks attach (as lwrcli.train.build does)."""
    from types import SimpleNamespace

    data = SimpleNamespace(num_classes=len(class_counts), class_counts=class_counts)
    parts = SimpleNamespace(data=data, batch_transforms=[], rank=0)
    for method in cfg.methods():
        if method.slot == "trick":
            method.attach(parts, cfg, None)
    return parts.batch_transforms


def test_uniform_smoothing_and_no_mixer_when_off() -> None:
    cfg = load_config("synthetic-lt-bs", overrides=["label_smoothing.epsilon=0.1"])
    assert not cfg.section("mixing").active
    (smoother,) = _batch_transforms(cfg, [9, 5, 1])  # smoothing only: no mixer
    assert isinstance(smoother, Smoother)
    _, t = smoother(torch.zeros(1, 1), torch.tensor([2]), 0, 0)
    torch.testing.assert_close(t, torch.tensor([[0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]]))
    assert _batch_transforms(load_config("synthetic-lt-bs"), [9, 5, 1]) == []
    sets = ["label_smoothing.epsilon=0.1", "mixing.mixup_alpha=0.2"]
    both = load_config("synthetic-lt-bs", overrides=sets)
    mixer, smoother = _batch_transforms(both, [9, 5, 1])  # mixing first, then smoothing
    assert isinstance(mixer, BatchMixer) and mixer.mixes and isinstance(smoother, Smoother)
    balanced = label_aware_epsilon([4, 4], 0.3, 0.0, "concave")
    assert balanced.tolist() == [0.3, 0.3]  # no head, no tail: every class a head class


# --- refusals through the CLI -------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["mixing.mixup_alpha=0.2", "loss.name=focal"], "loss.name=ce / bs / la"),
        (["mixing.cutmix_alpha=1", "loss.name=ldam", "model.head.name=cosine"], "ce / bs"),
        (["label_smoothing.epsilon=0.1", "loss.name=focal"], "label smoothing"),
        (["stage2.train_bn=true"], "stage2.freeze=backbone"),
        (
            [
                "mixing.mixup_alpha=1",
                "stage2.freeze=backbone",
                "stage2.cache_features=true",
                "data.crop_padding=0",
                "data.flip=false",
            ],
            "cache_features",
        ),
    ],
)
def test_refusals_exit_2_before_the_run_folder(
    lwr, synthetic_data: Path, tmp_path: Path, sets: list[str], needle: str
) -> None:
    res = lwr(*train_args("synthetic-lt-bs", synthetic_data, tmp_path / "run", *sets))
    assert res.code == 2, res.err
    assert needle in " ".join(res.err.split()), res.err
    assert "Traceback" not in res.err
    assert not (tmp_path / "run").exists()
    # The expert losses take soft targets too (within their multi-expert variant).
    expected = {"ce", "bs", "la", "dr", "sade", "balpoe"}
    assert expected == set(soft_target_losses()) & set(methods_of("loss"))


def test_frozen_backbone_without_weights_is_refused(lwr, synthetic_data: Path, tmp_path) -> None:
    sets = ["dataset=any", "model.name=small_cnn"]
    res = lwr(*train_args("cifar100-lt-ir100-mislas-stage2", synthetic_data, tmp_path / "r", *sets))
    assert res.code == 2
    assert "--init" in res.err and not (tmp_path / "r").exists()


# --- both pipelines, resume ---------------------------------------------------------------------

TINY = ["model.width=8", "batch_size=16", "eval_every=1", "log_every=1", "device=cpu"]
MIX = ["mixing.mixup_alpha=0.4", "mixing.cutmix_alpha=1.0", "label_smoothing.epsilon=0.1"]


JPEG_SETS = ["dataset=any", "data.image_size=16", "data.resize=18", "data.num_workers=0"]


@pytest.mark.parametrize("source, extra", [("small", []), ("jpegs", JPEG_SETS)])
def test_both_pipelines_train_on_mixed_batches(
    source: str, extra: list[str], tmp_path: Path, request: pytest.FixtureRequest, monkeypatch
) -> None:
    """One epoch on each pipeline: every batch reaches the loss as soft targets (N, C) that
    sum to one, mixed (not one-hot) and smoothed."""
    from lwrcli.train.engine import Trainer
    from lwrcli.train.run import train_run

    data = request.getfixturevalue(source)
    seen: list[torch.Tensor] = []
    original = Trainer.train_step

    def step(self: Trainer, x, y, *args):
        seen.append(y)
        return original(self, x, y, *args)

    monkeypatch.setattr(Trainer, "train_step", step)
    cfg = load_config("synthetic-lt-bs", overrides=[*TINY, *extra, *MIX, "epochs=1"])
    train_run(cfg, data, tmp_path / "run")
    assert seen and all(t.dim() == 2 and t.dtype == torch.float32 for t in seen)
    for t in seen:
        torch.testing.assert_close(t.sum(1), torch.ones(len(t)), rtol=0, atol=1e-5)
        assert float(t.max()) < 0.9 + 0.1 / t.shape[1] + 1e-6  # smoothed everywhere
    assert any(bool(((t > 0.05) & (t < 0.85)).any()) for t in seen)  # some pairs mixed


@pytest.mark.slow
@pytest.mark.parametrize("source, extra", [("small", []), ("jpegs", JPEG_SETS)])
def test_mixup_run_stopped_mid_epoch_resumes_bit_exact(
    source: str, extra: list[str], tmp_path: Path, monkeypatch, request: pytest.FixtureRequest
) -> None:
    from resume_scenario import cut_and_resume

    from lwrcli.train.runlog import read_metrics

    data = request.getfixturevalue(source)
    sets = [*TINY, *extra, *MIX, "epochs=2", "checkpoint_every_steps=2"]
    cfg = load_config("synthetic-lt-bs-lwr", overrides=sets)
    full, _ = cut_and_resume(cfg, data, tmp_path, monkeypatch)
    assert len(read_metrics(full / "metrics.jsonl")) == 3


# --- MiSLAS end to end --------------------------------------------------------------------------

SYNTH = ["dataset=any", "model.name=small_cnn", "model.width=8", "batch_size=16", "eval_every=0"]
SYNTH += ["log_every=1000", "device=cpu", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"]


def test_mislas_stage1_then_stage2_through_the_cli(lwr, small: Path, tmp_path: Path) -> None:
    """The shipped CIFAR-100 presets on tiny synthetic data: stage 1 (CE + mixup), then stage 2
    from its checkpoint: label-aware smoothing, class-balanced batches, frozen backbone whose
    BatchNorm statistics shift (train_bn) while every backbone parameter stays put."""
    from safetensors.torch import load_file

    s1 = tmp_path / "s1"
    res = lwr(*train_args("cifar100-lt-ir100-mislas-stage1", small, s1, *SYNTH, "epochs=1"))
    assert res.code == 0, res.err
    init = s1 / "checkpoints" / "last.safetensors"
    s2 = tmp_path / "s2"
    res = lwr(
        *train_args("cifar100-lt-ir100-mislas-stage2", small, s2, *SYNTH, "epochs=1"),
        "--init",
        init,
    )
    assert res.code == 0, res.err
    cfg = load_config(config_file=s2 / "config.yaml")
    assert cfg.section("stage2").train_bn and cfg.section("label_smoothing").tail == 0.1
    assert cfg.data.sampler == "class_balanced" and cfg.section("mixing").mixup_alpha == 0.0
    before, after = load_file(init), load_file(s2 / "checkpoints" / "last.safetensors")
    head = [k for k in before if k.startswith("fc.")]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    params = [k for k in before if k not in head and k not in stats and "num_batches" not in k]
    assert head and stats and params
    assert all(torch.equal(before[k], after[k]) for k in params), "a backbone parameter moved"
    assert any(not torch.equal(before[k], after[k]) for k in stats), "BN statistics did not shift"
    assert any(not torch.equal(before[k], after[k]) for k in head), "the classifier did not train"
    # Without shifted BN the statistics stay those of stage 1.
    s2b = tmp_path / "s2b"
    sets = [*SYNTH, "epochs=1", "stage2.train_bn=false"]
    res = lwr(*train_args("cifar100-lt-ir100-mislas-stage2", small, s2b, *sets), "--init", init)
    assert res.code == 0, res.err
    kept = load_file(s2b / "checkpoints" / "last.safetensors")
    assert all(torch.equal(before[k], kept[k]) for k in stats)


def test_train_bn_keeps_only_batchnorm_in_training_mode() -> None:
    from lwrcli.methods.stage2 import freeze_backbone
    from lwrcli.models import build_model

    cfg = load_config("synthetic-lt-bs", overrides=["model.width=8"])
    model = build_model(cfg.model, 5)
    freeze_backbone(model, train_bn=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.training for m in bns)
    others = [m for n, m in model.named_modules() if n and not n.startswith("fc") and m not in bns]
    assert others and not any(m.training for m in others)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc"))
    model.eval()
    assert not any(m.training for m in bns)
