"""Your own method without a fork: a package that declares an `lwr.plugins` entry point is
loaded at start and can register a loss, a backbone family, a tuning method and a dataset
source, which every command then treats like a built-in (tests/plugins/good: the example
plugin with its dist-info, found through PYTHONPATH as an installed package would be)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

PLUGINS = Path(__file__).resolve().parent / "plugins"
TINY = [
    "dataset=any",
    "device=cpu",
    "amp=none",
    "compile=false",
    "epochs=1",
    "batch_size=16",
    "eval_every=1",
    "model.width=8",
]


def run(*args: object, plugins: str | None = "good") -> subprocess.CompletedProcess[str]:
    """`lwr ARGS` in a fresh process, with the plugin folder on PYTHONPATH (or none)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    if plugins is not None:
        env["PYTHONPATH"] = str(PLUGINS / plugins)
    return subprocess.run(
        [sys.executable, "-m", "lwrcli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def train(data: Path, out: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    args: list[object] = ["train", "--preset", "synthetic-lt-bs", "--data", data, "--out", out]
    for item in [*TINY, *sets]:
        args += ["--set", item]
    return run(*args)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


@pytest.mark.slow
def test_a_plugin_loss_trains_evaluates_and_reports_like_a_built_in(
    small: Path, tmp_path: Path
) -> None:
    ce = train(small, tmp_path / "ce", "loss.name=ce")
    assert ce.returncode == 0, ce.stderr
    # Poly-1 with ε = 0 is cross-entropy: the same run, bit for bit.
    zero = train(small, tmp_path / "poly0", "loss.name=poly1", "loss.epsilon=0")
    assert zero.returncode == 0, zero.stderr
    a, b = weights(tmp_path / "ce"), weights(tmp_path / "poly0")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    poly = train(small, tmp_path / "poly2", "loss.name=poly1", "loss.epsilon=2")
    assert poly.returncode == 0, poly.stderr
    c = weights(tmp_path / "poly2")
    assert any(not torch.equal(a[k], c[k]) for k in a), "ε = 2 trained like CE"
    assert "epsilon: 2.0" in (tmp_path / "poly2" / "config.yaml").read_text()

    ckpt = tmp_path / "poly2" / "checkpoints" / "last.safetensors"
    ev = run("eval", ckpt, "--data", small, "--out", tmp_path / "ev")
    assert ev.returncode == 0, ev.stderr
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["top1"] is not None and summary["num_samples"] == 20

    rep = run("report", tmp_path / "ce", tmp_path / "poly2", "--format", "json")
    assert rep.returncode == 0, rep.stderr
    labels = json.dumps(json.loads(rep.stdout))
    assert "loss=poly1" in labels and "loss=ce" in labels

    # Its own settings only: focal's gamma is refused for it, naming the key.
    bad = train(small, tmp_path / "bad", "loss.name=poly1", "loss.gamma=2")
    assert bad.returncode == 2 and "loss.gamma" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()

    # Without the plugin installed, its checkpoint says what is missing (exit 2).
    missing = run("eval", ckpt, "--data", small, "--out", tmp_path / "ev2", plugins=None)
    assert missing.returncode == 2, missing.stderr
    assert "poly1" in missing.stderr and "plugin" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_presets_table_and_labels_take_the_plugin_loss(small: Path, tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("_base_: synthetic-lt-bs\nname: mine\nloss: {name: poly1, epsilon: 0.5}\n")
    shown = run("presets", "show", "--config", config)
    assert shown.returncode == 0, shown.stderr
    assert "name: poly1" in shown.stdout and "epsilon: 0.5" in shown.stdout
    listed = run("presets", "list")
    assert listed.returncode == 0, listed.stderr


@pytest.mark.slow
def test_a_plugin_family_tuning_and_source(tmp_path: Path) -> None:
    data = tmp_path / "blobs"
    made = run("prepare-data", "toy-blobs", "--out", data, "--num-classes", "3")
    assert made.returncode == 0, made.stderr
    assert json.loads((data / "manifest.json").read_text())["num_classes"] == 3
    full = train(data, tmp_path / "toy", "model.name=toy:w4")
    assert full.returncode == 0, full.stderr
    assert "toy:w4" in full.stderr
    # frozen_body adds no modules: only the head trains, exactly as the built-in `head`.
    head = train(data, tmp_path / "head", "model.name=toy:w4", "model.tuning=head")
    body = train(data, tmp_path / "body", "model.name=toy:w4", "model.tuning=frozen_body")
    assert head.returncode == 0 and body.returncode == 0, head.stderr + body.stderr
    a, b = weights(tmp_path / "head"), weights(tmp_path / "body")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    listed = run("models", "list", "toy:")
    assert listed.returncode == 0 and "toy:w8" in listed.stdout, listed.stderr
    unknown = train(data, tmp_path / "nope", "model.name=toy:w5")
    assert unknown.returncode == 2 and "w4" in unknown.stderr and not (tmp_path / "nope").exists()


def test_a_broken_plugin_stops_lwr_with_one_paragraph_naming_it() -> None:
    result = run("presets", "list", plugins="broken")
    assert result.returncode == 2
    assert "lwr plugin 'broken'" in result.stderr and "lwr_broken_plugin:register" in result.stderr
    assert "this plugin is unfinished" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 6  # one paragraph (wrapped)
