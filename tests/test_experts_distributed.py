"""RIDE under torchrun: 2 processes equal 1 process x 2 micro-batches and 1 process whole
(global-batch semantics, tests/test_distributed.py's scenario), with LWR on the three
experts' classifiers active from the first step. GroupNorm: no batch statistics, so every
split computes the same function. In float64 one step's gradients of the whole batch and of
its two micro-batches agree to 1e-15 (tests/test_experts_runs.py): the split is exact. What
is left is float32 summation order, which RIDE's scale-30 cosine logits amplify over the
steps (about lr x 0.1 relative after 2 epochs here: 5e-3 at lr 0.05, 6e-4 at 0.01, 4e-5 at
0.002), so the runs use lr 0.002 and the bound of tests/test_distributed.py, 1e-4.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, train_args
from safetensors.torch import load_file

from lwrcli.config import load_config
from lwrcli.data.synthetic import prepare_synthetic
from lwrcli.train.run import train_run

RIDE = ["dataset=any", "model.name=resnet32", "model.norm=group", "model.resnet_width=8"]
RIDE += ["model.variant.name=experts", "model.variant.reduce_width=true"]
RIDE += ["model.head.name=cosine", "model.head.scale=30", "loss.name=ride"]
# Per-sample terms only (DRW's weighted mean does not split over processes; off here).
RIDE += ["loss.reweight=none", "batch_size=64", "epochs=2", "device=cpu", "lwr.theta=0.0"]
RIDE += ["optim.lr=0.002", "amp=none"]  # fp32 on any CPU: bf16 would swamp the 1e-4 bound
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 train images: two full global batches of 64 and a last one of 22 per epoch."""
    out = tmp_path_factory.mktemp("dist") / "data"
    prepare_synthetic(out, num_classes=5, n_max=60, test_per_class=5, imbalance_factor=4, seed=2)
    return out


def _rel_diff(a: Path, b: Path) -> float:
    wa = load_file(str(a / "checkpoints" / "last.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last.safetensors"))
    assert wa.keys() == wb.keys()
    x = torch.cat([wa[k].double().flatten() for k in sorted(wa)])
    y = torch.cat([wb[k].double().flatten() for k in sorted(wa)])
    return float((x - y).norm() / x.norm())


@pytest.mark.slow
def test_ride_two_processes_equal_one_and_two_micro_batches(data: Path, tmp_path: Path) -> None:
    preset = "synthetic-lt-bs-lwr"
    train_run(load_config(preset, overrides=RIDE), data, tmp_path / "one")
    accum = load_config(preset, overrides=[*RIDE, "accum_steps=2"])
    train_run(accum, data, tmp_path / "accum")
    cmd = [*TORCHRUN, "2", "-m", "lwrcli", *train_args(preset, data, tmp_path / "two", *RIDE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2, batch 32 per process, global batch 64" in proc.stdout + proc.stderr
    two = _rel_diff(tmp_path / "one", tmp_path / "two")
    acc = _rel_diff(tmp_path / "accum", tmp_path / "two")
    print(
        f"relative weight difference: 1 vs 2 processes {two:.2e}, accum 2 vs 2 processes {acc:.2e}"
    )
    assert two < 1e-4 and acc < 1e-4
    other = load_config(preset, overrides=[*RIDE, "seed=1"])  # the comparison can fail
    train_run(other, data, tmp_path / "other")
    assert _rel_diff(tmp_path / "one", tmp_path / "other") > 1e-2
