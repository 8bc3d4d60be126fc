"""One recipe, any number of processes: global-batch semantics under torchrun on CPU (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, train_args
from jpegtree import write_image_folder
from safetensors.torch import load_file

from lwrcli.config import load_config
from lwrcli.data.folder import prepare_folder
from lwrcli.data.synthetic import prepare_synthetic
from lwrcli.train.run import train_run

# Group norm: no batch statistics, so 1 and 2 processes compute the same function.
EXACT = ["model.norm=group", "model.width=8", "batch_size=64", "epochs=2", "device=cpu"]
EXACT += ["eval_every=1", "lwr.theta=0.0"]  # LWR active from the first step
EXACT += ["amp=none"]  # fp32 on any CPU: bf16 rounding would swamp the 1e-4 comparison
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 train images: two full global batches of 64 and a last one of 22 per epoch."""
    out = tmp_path_factory.mktemp("dist") / "data"
    prepare_synthetic(out, num_classes=5, n_max=60, test_per_class=5, imbalance_factor=4, seed=2)
    return out


def _torchrun(n: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [*TORCHRUN, str(n), "-m", "lwrcli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _max_rel_diff(a: Path, b: Path) -> float:
    """|W_a - W_b| / |W_a| over all weights of the two runs' final checkpoints, as one vector
    (per tensor, the GroupNorm biases of norm ~1e-3 would turn float noise into 1e-3)."""
    wa = load_file(str(a / "checkpoints" / "last.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last.safetensors"))
    assert wa.keys() == wb.keys()
    x = torch.cat([wa[k].double().flatten() for k in sorted(wa)])
    y = torch.cat([wb[k].double().flatten() for k in sorted(wa)])
    return float((x - y).norm() / x.norm())


@pytest.mark.slow
def test_two_processes_equal_one_and_accumulation_equals_both(data: Path, tmp_path: Path) -> None:
    cfg = load_config("synthetic-lt-bs-lwr", overrides=EXACT)
    train_run(cfg, data, tmp_path / "one")
    accum = load_config("synthetic-lt-bs-lwr", overrides=[*EXACT, "accum_steps=2"])
    train_run(accum, data, tmp_path / "accum")
    proc = _torchrun(2, *train_args("synthetic-lt-bs-lwr", data, tmp_path / "two", *EXACT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("Done:") == 1 and out.count("Training 'synthetic-lt-bs-lwr'") == 1
    assert "world size 2, batch 32 per process, global batch 64" in out
    two, acc = (
        _max_rel_diff(tmp_path / "one", tmp_path / "two"),
        _max_rel_diff(tmp_path / "one", tmp_path / "accum"),
    )
    print(f"max relative weight difference: 2 processes {two:.2e}, accum_steps=2 {acc:.2e}")
    assert two < 1e-4 and acc < 1e-4
    # ... and the comparison can fail: another seed gives other weights.
    other = load_config("synthetic-lt-bs-lwr", overrides=[*EXACT, "seed=1"])
    train_run(other, data, tmp_path / "other")
    assert _max_rel_diff(tmp_path / "one", tmp_path / "other") > 1e-2
    metrics = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    metrics, one = metrics[1:], one[1:]  # past the epoch-0 geometry records
    assert [m["test_images"] for m in metrics] == [25, 25]
    assert metrics[-1]["train_acc"] == pytest.approx(one[-1]["train_acc"], abs=1e-9)


@pytest.mark.slow
def test_a_batch_that_does_not_divide_is_refused_once(data: Path, tmp_path: Path) -> None:
    proc = _torchrun(2, *train_args("synthetic-lt-bs", data, tmp_path / "r", "batch_size=63"))
    assert proc.returncode != 0
    err = proc.stderr
    assert err.count("error: batch_size 63 is the global batch") == 1, err[-3000:]
    assert "62 and 64" in err
    # torchrun reports the failed workers with its own traceback; none comes from lwr.
    assert "lwrcli/" not in err.split("error: batch_size")[0][-2000:] and "UserError" not in err


@pytest.mark.slow
def test_an_error_on_one_rank_ends_both_with_the_rank_named(data: Path, tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from lwrcli.train.engine import Trainer\n"
        "    _step = Trainer.train_step\n"
        "    def _boom(self, *args):\n"
        "        if args[2] > 0.5:\n"
        "            raise RuntimeError('injected failure')\n"
        "        return _step(self, *args)\n"
        "    Trainer.train_step = _boom\n"
    )
    env_path = f"{hook}:{REPO}"
    cmd = [*TORCHRUN, "2", "-m", "lwrcli"]
    cmd += train_args("synthetic-lt-bs", data, tmp_path / "r", "model.width=8", "batch_size=32")
    cmd += ["--set", "dist_timeout_minutes=1"]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": env_path},
    )
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 120
    assert "error: on rank 1 of 2: RuntimeError: injected failure" in proc.stderr, proc.stderr[
        -3000:
    ]


@pytest.mark.slow
def test_dataloader_pipeline_two_processes_score_every_test_image_once(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "tree", [30, 20, 12])
    prepare_folder(tmp_path / "tree", tmp_path / "data", test_per_class=3)
    sets = ["dataset=any", "model.width=8", "batch_size=8", "epochs=1", "device=cpu"]
    sets += ["data.image_size=16", "data.resize=18", "data.num_workers=2"]
    proc = _torchrun(2, *train_args("synthetic-lt-bs", tmp_path / "data", tmp_path / "run", *sets))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test_images"] == 9  # 3 classes x 3, none twice, none left out


def test_sync_bn_on_cpu_is_a_clear_error(lwr, data: Path, tmp_path: Path) -> None:
    r = lwr(*train_args("synthetic-lt-bs", data, tmp_path / "r", "sync_bn=true", "device=cpu"))
    assert r.code == 2 and "SyncBatchNorm runs on CUDA only" in r.err


def test_group_norm_only_for_builtin_models() -> None:
    from lwrcli.config import validate_config
    from lwrcli.errors import UserError

    with pytest.raises(UserError, match="model.norm=group applies to the built-in"):
        validate_config({"model": {"name": "resnet50", "norm": "group"}})
    model_cfg = validate_config({"model": {"name": "resnet32", "norm": "group"}}).model
    from lwrcli.models import build_model

    model = build_model(model_cfg, 10)
    groups = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert groups and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert {m.num_groups for m in groups} == {16, 32}  # min(32, channels) for 16/32/64


def test_global_batch_split_in_one_process_matches_the_per_rank_parts(data: Path) -> None:
    """The device loader's rank parts of a global batch are exactly the one-process batch."""
    from lwrcli.data.arrays import load_arrays
    from lwrcli.data.device_loader import DeviceImageLoader

    images, labels = load_arrays(data, "train")

    def batches(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = DeviceImageLoader(
            images, labels, 64 // world, (0, 0, 0), (1, 1, 1), True, 4, True, 3, rank, world
        )
        loader.set_epoch(0)
        return list(loader)

    single = batches(0, 1)
    parts = [batches(r, 2) for r in (0, 1)]
    assert len(single) == len(parts[0]) == len(parts[1]) == 3
    for k, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([parts[0][k][0], parts[1][k][0]]), x)
        assert torch.equal(torch.cat([parts[0][k][1], parts[1][k][1]]), y)
