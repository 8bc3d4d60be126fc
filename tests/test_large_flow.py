"""ImageNet-LT style flow on real JPEG files: prepare -> ResNet-50 -> eval -> analyze."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import train_args
from jpegtree import write_list_dataset

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resnet50_on_generated_jpegs(lwr, tmp_path: Path) -> None:
    lists = write_list_dataset(tmp_path / "raw")
    data = tmp_path / "data"
    r = lwr(
        "prepare-data",
        "imagenet-lt",
        "--root",
        tmp_path / "raw" / "images",
        "--out",
        data,
        "--train-list",
        lists["train"],
        "--val-list",
        lists["val"],
        "--test-list",
        lists["test"],
    )
    assert r.code == 0, r.err
    run = tmp_path / "run"
    r = lwr(
        *train_args(
            "imagenet-lt-bs-lwr",
            data,
            run,
            "epochs=1",
            "batch_size=8",
            "eval_batch_size=8",
            "data.image_size=32",
            "data.resize=36",
            "data.num_workers=0",
            "amp=none",
            "device=cpu",
        ),
    )
    assert r.code == 0, r.err
    assert "linear scaling of lr 0.2 from batch 512" in r.err
    assert "model selection on: val" in r.err
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_top1"] is not None and record["test_top1"] is not None
    assert record["lr"] < 0.2 * 8 / 512 + 1e-12  # cosine schedule, scaled lr
    # Selection happened on val, so best exists, and it is the only epoch.
    best = run / "checkpoints" / "best.safetensors"
    assert best.is_file()
    r = lwr("eval", best, "--data", data, "--json", "--posthoc-tau", "1.0")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["split"] == "test" and summary["num_samples"] == 18
    assert "post-hoc logit adjustment" in summary["adjustment"]
    r = lwr(
        "analyze-weights",
        run / "checkpoints" / "last.safetensors",
        "--data",
        data,
        "--out",
        tmp_path / "an",
    )
    assert r.code == 0, r.err
    assert (tmp_path / "an" / "norms.png").read_bytes().startswith(PNG)


def test_eval_refuses_another_dataset(lwr, tmp_path: Path, synthetic_data: Path) -> None:
    lists = write_list_dataset(tmp_path / "raw")
    data = tmp_path / "data"
    r = lwr(
        "prepare-data",
        "places-lt",
        "--root",
        tmp_path / "raw" / "images",
        "--out",
        data,
        "--train-list",
        lists["train"],
        "--val-list",  # else the Places-LT val list shipped with lwr (365 classes) is used
        lists["val"],
        "--test-list",
        lists["test"],
    )
    assert r.code == 0, r.err
    run = tmp_path / "run"
    r = lwr(
        *train_args("synthetic-lt-bs", synthetic_data, run, "epochs=1", "model.width=8"),
    )
    assert r.code == 0, r.err
    r = lwr("eval", run / "checkpoints" / "last.safetensors", "--data", data)
    assert r.code == 2 and "Class-count mismatch" in r.err
    r = lwr(
        "train",
        "--preset",
        "cifar100-lt-ir100-bs",
        "--data",
        synthetic_data,
        "--out",
        tmp_path / "r2",
    )
    assert r.code == 2 and "dataset=any" in r.err
    assert not (tmp_path / "r2").exists()
