"""The whole flow through the command line, and how it treats bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, train_args

PNG = b"\x89PNG\r\n\x1a\n"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_help_for_every_command(lwr) -> None:
    for cmd in ([], ["prepare-data"], ["train"], ["eval"], ["analyze-weights"], ["presets"]):
        r = lwr(*cmd, "--help")
        assert r.code == 0 and "Usage" in r.out, cmd


@pytest.mark.slow
def test_synthetic_flow_end_to_end(lwr, tmp_path: Path, synthetic_data: Path) -> None:
    run = tmp_path / "run"
    r = lwr(
        *train_args("synthetic-lt-bs-lwr", synthetic_data, run, "epochs=2", "eval_every=1"),
    )
    assert r.code == 0, r.err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # epoch 0: the geometry the head starts from, written with the first checkpoint
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    assert lines[0]["geom_cos_max"] is not None and "loss" not in lines[0]
    lines = lines[1:]
    for key in (
        "loss",
        "task",
        "lwr",
        "lwr_lambda",
        "lr",
        "train_acc",
        "test_top1",
        "images_per_s",
    ):
        assert lines[-1][key] is not None, key
    assert lines[0]["lwr_lambda"] < lines[1]["lwr_lambda"]  # linear ramp
    assert (run / "config.yaml").is_file() and (run / "environment.json").is_file()
    ckpt = run / "checkpoints" / "last.safetensors"
    assert ckpt.is_file()

    r = lwr("eval", ckpt, "--data", synthetic_data, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    for key in ("top1", "top5", "many", "medium", "few", "group_sizes"):
        assert key in summary
    assert 0 <= summary["top1"] <= summary["top5"] <= 100
    assert summary["synthetic"] is True
    csv = (run / "eval" / "last" / "per_class.csv").read_text().splitlines()
    assert csv[0].startswith("class_id") and len(csv) == 1 + 20

    out = tmp_path / "analysis"
    r = lwr("analyze-weights", ckpt, ckpt, "--data", synthetic_data, "--out", out)
    assert r.code == 0, r.err
    pngs = list(out.glob("*.png"))
    assert len(pngs) >= 3 and all(p.read_bytes().startswith(PNG) for p in pngs)
    assert json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_cifar100_flow_on_fake_archives(lwr, tmp_path: Path) -> None:
    from fakecifar import write_fake_cifar

    write_fake_cifar(tmp_path / "raw", "cifar100")
    data = tmp_path / "c100"
    r = lwr(
        "prepare-data",
        "cifar100",
        "--root",
        tmp_path / "raw",
        "--out",
        data,
        "--imbalance-factor",
        "100",
    )
    assert r.code == 0, r.err
    manifest = json.loads((data / "manifest.json").read_text())
    assert sum(manifest["class_counts"]) == 10847 and manifest["splits"]["test"] == 10000
    run = tmp_path / "run"
    r = lwr(
        # The preset's loss, LWR, schedule and lr rule on the real split; a small CNN instead of
        # ResNet-32 (whose definition tests/test_models.py checks) keeps the epoch short.
        *train_args(
            "cifar100-lt-ir100-bs-lwr",
            data,
            run,
            "epochs=1",
            "batch_size=256",
            "model.name=small_cnn",
            "model.width=8",
        ),
    )
    assert r.code == 0, r.err
    assert "linear scaling" in r.err  # the lr rule is stated, not silent
    ckpt = run / "checkpoints" / "last.safetensors"
    r = lwr("eval", ckpt, "--data", data, "--json", "--out", tmp_path / "ev")
    assert r.code == 0, r.err
    assert json.loads(r.out)["group_sizes"] == {"many": 35, "medium": 35, "few": 30}
    r = lwr("analyze-weights", ckpt, "--data", data, "--out", tmp_path / "an")
    assert r.code == 0, r.err
    assert (tmp_path / "an" / "norms.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    "args, expect",
    [
        (["train", "--preset", "nope", "--data", "D", "--out", "R"], "Unknown preset"),
        (
            [
                *train_args("synthetic-lt-bs", "D", "R", "lwr.thetta=1"),
            ],
            "Did you mean 'lwr.theta'",
        ),
        (
            [
                *train_args("synthetic-lt-bs", "D", "R", "epochs=abc"),
            ],
            "epochs",
        ),
        (
            ["train", "--preset", "synthetic-lt-bs", "--data", "missing", "--out", "R"],
            "does not exist",
        ),
        (
            [
                "prepare-data",
                "cifar100",
                "--root",
                "raw",
                "--out",
                "X",
                "--imbalance-factor",
                "0.01",
            ],
            "100",
        ),
        (["prepare-data", "imagenet", "--root", "raw", "--out", "X"], "Unknown source"),
        (["eval", "truncated.safetensors", "--data", "D"], "truncated"),
    ],
)
def test_bad_input_is_one_paragraph_exit_2(
    lwr, tmp_path: Path, args, expect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "truncated.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a')
    r = lwr(*args)
    assert r.code == 2, (r.out, r.err)
    assert expect in r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "R").exists() and not (tmp_path / "X").exists()


def test_nothing_is_overwritten(lwr, tmp_path: Path, synthetic_data: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    r = lwr("train", "--preset", "synthetic-lt-bs", "--data", synthetic_data, "--out", run)
    assert r.code == 2 and "already exists" in r.err and "new --out" in r.err
    assert _files(run) == {"notes.txt": b"mine"}
    before = _files(synthetic_data)
    r = lwr("prepare-data", "synthetic", "--out", synthetic_data)
    assert r.code == 2 and "--overwrite" in r.err
    assert _files(synthetic_data) == before


@pytest.mark.slow
def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lwrcli",
            "train",
            "--preset",
            "cifar100-lt-ir100-bs-lwrr",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "cifar100-lt-ir100-bs-lwr" in proc.stderr


def test_presets_list_and_show(lwr) -> None:
    from lwrcli.config import list_presets

    r = lwr("presets", "list")
    assert r.code == 0
    for header in ("dataset", "model", "loss", "LWR", "epochs"):
        assert header in r.out
    for name in list_presets():
        assert name in r.out  # full names, never truncated
    assert "50.7" in r.out  # the paper's number beside cifar100-lt-ir100-bs-lwr
    r = lwr("presets", "show", "cifar100-lt-ir100-bs-lwr")
    assert r.code == 0 and "theta: 0.4" in r.out and "lambda_max: 10.0" in r.out
    r = lwr("presets", "show", "nope")
    assert r.code == 2 and "Unknown preset" in r.err


def test_presets_show_a_sweep_file_and_list_by_pattern(lwr) -> None:
    """Issue 24: the sweep files that `presets list` shows, `presets show` shows too; a
    PATTERN filters the list as `models list PATTERN` does."""
    import yaml

    r = lwr("presets", "show", "cifar100-lt-ir100-table")
    assert r.code == 0, r.err
    assert yaml.safe_load(r.out)["entries"][0]["preset"].startswith("cifar100-lt-ir100-")
    r = lwr("presets", "show", "cifar100-lt-ir100-tabel")
    assert r.code == 2 and "Did you mean 'cifar100-lt-ir100-table'" in r.err
    r = lwr("presets", "show", "cifar100-lt-ir100-table", "--diff")
    assert r.code == 2 and "sweep file" in r.err
    r = lwr("presets", "list", "ldam-drw-lwr")
    rows = [line.split("│")[1].strip() for line in r.out.splitlines() if line.startswith("│")]
    rows = [n for n in rows if n]
    assert r.code == 0 and rows and all("ldam-drw-lwr" in n for n in rows), r.out
    assert "sweeps matching" not in r.out  # no sweep file matches: no empty table
    r = lwr("presets", "list", "cifar100-lt-ir100-*-lwr")
    names = [line.split("│")[1].strip() for line in r.out.splitlines() if line.startswith("│")]
    names = [n for n in names if n]  # a folded cell continues on a row of its own
    assert "cifar100-lt-ir100-bs-lwr" in names and "cifar100-lt-ir10-bs-lwr" not in names
    assert all(n.startswith("cifar100-lt-ir100-") and n.endswith("-lwr") for n in names)
    r = lwr("presets", "list", "table")
    assert r.code == 0 and "cifar100-lt-ir100-table" in r.out and "presets matching" not in r.out
    r = lwr("presets", "list", "zzz")
    assert r.code == 2 and "matches 'zzz'" in r.err


def test_models_help_mentions_clip(lwr) -> None:
    r = lwr("models", "--help")
    assert r.code == 0 and "CLIP" in r.out
