"""EMA of the weights: the closed-form average, its checkpoint entry, evaluation on it, and
bit-exact resume (with RandAugment on, mid-epoch) on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from jpegtree import write_image_folder
from resume_scenario import cut_and_resume
from safetensors.torch import load_file
from torch import nn

from lwrcli.checkpoint.files import EMA_PREFIX, EMA_STEPS, load_checkpoint
from lwrcli.config import load_config
from lwrcli.data.folder import prepare_folder
from lwrcli.errors import UserError
from lwrcli.methods.ema import EMAConfig, WeightEMA
from lwrcli.train.run import train_run
from lwrcli.train.runlog import read_metrics
from lwrcli.use.evaluate import evaluate_checkpoint

TINY = ["model.width=8", "batch_size=16", "eval_every=1", "log_every=1", "device=cpu"]


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()


@pytest.mark.parametrize("every, warmup", [(1, False), (2, False), (1, True), (3, True)])
def test_ema_equals_the_closed_form_average(every: int, warmup: bool) -> None:
    """A known weight sequence w_1..w_T (as if each were an optimizer step's result): the
    average equals w_ema_0 = w_0, w_ema_n = d_n w_ema_(n-1) + (1 - d_n) w_(step of update n),
    recomputed here in numpy float64; BatchNorm's running mean is averaged the same way and
    its batch counter copied."""
    decay = 0.8
    model = _toy()
    ema = WeightEMA(model, EMAConfig(enabled=True, decay=decay, every=every, warmup=warmup))
    rng = np.random.default_rng(0)
    w0 = model[0].weight.detach().numpy().copy()
    m0 = model[1].running_mean.numpy().copy()
    expect_w, expect_m, n = w0, m0, 0
    for step in range(1, 12):
        w = rng.normal(size=(2, 3))
        m = rng.normal(size=2)
        with torch.no_grad():
            model[0].weight.copy_(torch.from_numpy(w))
            model[1].running_mean.copy_(torch.from_numpy(m))
            model[1].num_batches_tracked.fill_(step)
        ema.after_step()
        if step % every == 0:
            n += 1
            d = min(decay, (1 + n) / (10 + n)) if warmup else decay
            expect_w = d * expect_w + (1 - d) * w
            expect_m = d * expect_m + (1 - d) * m
        got = ema.module[0].weight.detach().numpy()
        np.testing.assert_allclose(got, expect_w, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ema.module[1].running_mean.numpy(), expect_m, atol=1e-12)
    assert int(ema.module[1].num_batches_tracked) == 11 // every * every  # copied
    assert ema.updates == 11 // every and ema.steps == 11


def test_ema_state_round_trips_through_checkpoint_tensors(tmp_path: Path) -> None:
    model = _toy()
    a = WeightEMA(model, EMAConfig(enabled=True, decay=0.5, every=2))
    for _ in range(5):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        a.after_step()
    tensors = a.state_tensors()
    assert torch.equal(tensors[EMA_STEPS], torch.tensor([5, 2]))

    class Saved:  # what load() reads of a Checkpoint
        extras = tensors
        path = tmp_path

    b = WeightEMA(model, EMAConfig(enabled=True, decay=0.5, every=2))
    b.load(Saved())  # type: ignore[arg-type]
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        a.after_step()
        b.after_step()
    assert all(torch.equal(a.module.state_dict()[k], v) for k, v in b.module.state_dict().items())
    assert int(b.averaged.n_averaged) == int(a.averaged.n_averaged) == 1 + 4  # copy + updates


def test_eval_uses_the_ema_weights(lwr, small: Path, tmp_path: Path) -> None:
    """Training's last evaluation, the checkpoint's loaded state and `lwr eval` all see the
    average: the accuracy equals that of a model given the stored ema tensors by hand, and
    differs from the raw weights'."""
    cfg = load_config(
        "synthetic-lt-ce",
        overrides=[*TINY, "epochs=2", "ema.enabled=true", "ema.decay=0.5", "data.select_on=none"],
    )
    train_run(cfg, small, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    raw = load_file(str(path))
    ema = {k[len(EMA_PREFIX) :]: v for k, v in raw.items() if k.startswith(EMA_PREFIX)}
    assert ema.keys() == {k for k in raw if not k.startswith("lwr_state.")}
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    loaded = load_checkpoint(path)
    assert loaded.meta["weights"] == "ema"
    assert all(torch.equal(loaded.state[k], ema[k]) for k in ema)
    as_raw = load_checkpoint(path, weights="raw")
    assert all(torch.equal(as_raw.state[k], raw[k]) for k in ema)
    scores = evaluate_checkpoint(path, small, device="cpu")
    assert scores["weights"] == "ema"
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert scores["top1"] == pytest.approx(record["test_top1"], abs=1e-9)
    result = lwr("eval", path, "--data", small, "--device", "cpu", "--json", "--raw-weights")
    assert result.code == 0, result.err
    assert json.loads(result.out)["weights"] == "raw"
    # By hand: the model built from its config, given the ema tensors.
    from lwrcli.use.evaluate import load_model

    by_hand = load_model(loaded, torch.device("cpu"))
    assert all(torch.equal(by_hand.state_dict()[k], ema[k]) for k in ema)


def test_ema_config_refusals() -> None:
    with pytest.raises(UserError, match="ema.decay"):
        load_config("synthetic-lt-ce", overrides=["ema.decay=1.0"])
    with pytest.raises(UserError, match="ema.every"):
        load_config("synthetic-lt-ce", overrides=["ema.every=0"])
    with pytest.raises(UserError, match="Unknown config key 'ema.start'"):
        load_config("synthetic-lt-ce", overrides=["ema.start=3"])


def _cut_and_resume(cfg_sets: list[str], data: Path, tmp_path: Path, mp: pytest.MonkeyPatch):
    cfg = load_config("synthetic-lt-bs-lwr", overrides=cfg_sets)
    cut_and_resume(cfg, data, tmp_path, mp, holds=EMA_PREFIX)


RESUME = [*TINY, "epochs=2", "checkpoint_every_steps=2", "ema.enabled=true", "ema.decay=0.7"]


@pytest.mark.parametrize(
    "augment",
    [
        "randaugment",
        pytest.param("trivialaugment", marks=pytest.mark.slow),
        pytest.param("autoaugment", marks=pytest.mark.slow),
    ],
)
def test_ema_and_policy_run_resumes_bit_exactly_mid_epoch(
    augment: str, small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device-resident pipeline: a run with EMA (updated every 2nd step) and an augmentation
    policy, stopped inside epoch 1 and resumed, ends with the same weights, average and
    metrics as the uninterrupted run."""
    sets = [*RESUME, "ema.every=2", f"data.augment={augment}"]
    _cut_and_resume(sets, small, tmp_path, monkeypatch)


@pytest.mark.slow
def test_image_list_run_with_randaugment_resumes_bit_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DataLoader pipeline (real JPEGs, 2 workers) with RandAugment and EMA."""
    write_image_folder(tmp_path / "tree", [40, 30, 20, 12])
    prepare_folder(tmp_path / "tree", tmp_path / "data", test_per_class=2)
    sets = [
        *RESUME,
        "dataset=any",
        "data.image_size=16",
        "data.resize=18",
        "data.num_workers=2",
        "data.augment=randaugment",
    ]
    _cut_and_resume(sets, tmp_path / "data", tmp_path, monkeypatch)
