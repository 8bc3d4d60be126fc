"""Class-vector geometry in the epoch record, and LWR's share of the classifier gradient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lwrcli.checkpoint.files import load_checkpoint
from lwrcli.config import load_config
from lwrcli.train.geometry import class_geometry
from lwrcli.train.lwr import lwr_penalty, project_rows, shared_direction
from lwrcli.train.run import train_run
from lwrcli.use.analysis import weight_stats


def _numpy_geometry(w: np.ndarray, theta: float) -> dict[str, float]:
    v = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    s = np.clip(v @ v.T, -1, 1)
    off = ~np.eye(len(w), dtype=bool)
    return {
        "mean": s[off].mean(),
        "max": s[off].max(),
        "frac": (s[off] > theta).mean(),
        "r": np.maximum(s[off] - theta, 0).sum() / off.sum(),
    }


@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("block", [1, 7, 1024])
def test_geometry_matches_numpy(proj: bool, block: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(23, 16, dtype=torch.float64) + 0.8 * torch.randn(16, dtype=torch.float64)
    counts = [150] * 5 + [50] * 8 + [5] * 10
    g = class_geometry(w, counts, theta=0.1, proj=proj, block_size=block)
    seen = project_rows(w, shared_direction(w)) if proj else w
    ref = _numpy_geometry(seen.numpy(), 0.1)
    raw = _numpy_geometry(w.numpy(), 0.1)
    assert g["geom_cos_mean"] == pytest.approx(ref["mean"], abs=1e-12)
    assert g["geom_cos_max"] == pytest.approx(ref["max"], abs=1e-12)
    assert g["geom_frac_above"] == pytest.approx(ref["frac"], abs=1e-12)
    assert g["geom_r"] == pytest.approx(ref["r"], abs=1e-12)
    assert g["geom_raw_cos_mean"] == pytest.approx(raw["mean"], abs=1e-12)
    assert g["geom_raw_cos_max"] == pytest.approx(raw["max"], abs=1e-12)
    assert g["geom_pairs_above"] * 2 == round(ref["frac"] * 23 * 22)
    norms = np.linalg.norm(w.numpy(), axis=1)
    assert g["geom_norm_ratio"] == pytest.approx(norms[:5].mean() / norms[13:].mean())
    assert g["geom_r"] == pytest.approx(float(lwr_penalty(w, 0.1, proj=proj)), abs=1e-12)


@pytest.mark.slow
def test_epoch_record_geometry_equals_analyze_weights(tmp_path: Path, synthetic_data: Path) -> None:
    """The last epoch's geometry fields equal analyze-weights' summary of the last checkpoint,
    and LWR's gradient share and repelled pairs are recorded."""
    cfg = load_config(
        "synthetic-lt-bs-lwr",
        overrides=["epochs=2", "eval_every=0", "model.width=8", "batch_size=128", "log_every=4"],
    )
    train_run(cfg, synthetic_data, tmp_path / "run")
    rec = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = rec[-1]
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    stats = weight_stats(ck.classifier_weight, ck.class_counts, 0.4, 1, proj=True)
    assert last["geom_raw_cos_mean"] == pytest.approx(stats["overall"]["mean"], abs=1e-5)
    assert last["geom_raw_cos_max"] == pytest.approx(stats["overall"]["max"], abs=1e-5)
    assert last["geom_r"] == pytest.approx(stats["r_lwr"]["value"], abs=1e-6)
    assert last["geom_norm_ratio"] == pytest.approx(stats["norm_ratio_head_tail"], rel=1e-5)
    w = ck.classifier_weight.double()
    seen = weight_stats(project_rows(w, shared_direction(w)), ck.class_counts, 0.4, 1, False)
    assert last["geom_cos_max"] == pytest.approx(seen["overall"]["max"], abs=1e-5)
    assert last["geom_cos_mean"] == pytest.approx(seen["overall"]["mean"], abs=1e-5)
    assert rec[0]["epoch"] == 0 and "lwr_share" not in rec[0]  # geometry before training
    for r in rec[1:]:
        assert r["lwr_share"] is not None and r["lwr_share"] > 0
        assert r["lwr_pairs_above"] >= 0


def test_lwr_share_equals_separate_gradients(synthetic_data: Path) -> None:
    """The share from the step's own backward equals |λ∇R| / |∇L_task| from two separate
    backward passes on a copy of the model (same batch, same weights)."""
    import copy

    from lwrcli.data.loading import build_data
    from lwrcli.models import get_classifier
    from lwrcli.train.build import build_components
    from lwrcli.train.engine import Trainer

    cfg = load_config(
        "synthetic-lt-bs-lwr", overrides=["model.width=8", "device=cpu", "lwr.theta=0"]
    )
    device = torch.device("cpu")
    data = build_data(synthetic_data, cfg, device)
    parts = build_components(cfg, data, device)
    trainer = Trainer(cfg, parts, device, run_dir=None)
    x, y = next(iter(data.train))
    twin = copy.deepcopy(parts.raw_model).train()
    t = 7.5
    trainer._measure_share = True
    terms = trainer.train_step(x, y, t, None)

    w = get_classifier(twin).weight
    task = parts.loss(twin(x).float(), y, None)
    (g_task,) = torch.autograd.grad(task, w)
    lam = trainer.regularizer.lam(t)
    (g_lwr,) = torch.autograd.grad(lam * lwr_penalty(w, 0.0, 1, True), w)
    expected = float(g_lwr.norm() / g_task.norm())
    assert expected > 0
    assert float(terms["lwr_share"]) == pytest.approx(expected, rel=1e-4)
