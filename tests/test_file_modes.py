"""Readable by others (issue 24): every file and folder lwr writes gets the mode the user's
umask gives (0666 / 0777 minus umask), including the atomic temp-then-rename writes, whose
temporary files (mkstemp, mkdtemp, safetensors' save_file) start at 0600 / 0700.

Every writing command runs under umask 022 and 077, and every path it wrote is checked."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from jpegtree import write_image_folder

from lwrcli.runtime import files

TINY = ("model.width=8", "epochs=1", "batch_size=16", "dataset=any", "device=cpu")


@pytest.fixture
def umask_of(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under umask `request.param`; the previous umask comes back afterwards."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def wrong_modes(root: Path, mask: int, executables: set[Path] = frozenset()) -> list[str]:
    """Every path under `root` (itself included) whose mode is not what `mask` gives."""
    found = []
    for path in [root, *sorted(root.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            want = 0o777 & ~mask
        else:
            want = (0o777 if path in executables else 0o666) & ~mask
        if mode != want:
            found.append(f"{path.relative_to(root.parent)}: {mode:o}, not {want:o}")
    return found


def test_the_helpers_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        assert files.umask() == 0o027
        assert os.umask(0o027) == 0o027  # reading it did not change it
        tmp = files.temp_beside(tmp_path / "x.bin")
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o640
        folder = files.temp_folder(tmp_path / "d")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750
        script = files.write_atomic(tmp_path / "run.sh", "echo\n", executable=True)
        assert stat.S_IMODE(script.stat().st_mode) == 0o750
        text = files.write_atomic(tmp_path / "a.txt", "é\n")
        assert stat.S_IMODE(text.stat().st_mode) == 0o640 and text.read_text() == "é\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["a.txt", "run.sh", tmp.name, folder.name]
        )  # no temporary file left behind
    finally:
        os.umask(previous)


@pytest.mark.parametrize("umask_of", [0o022, 0o077], indirect=True, ids=["022", "077"])
def test_every_writing_command_follows_the_umask(
    lwr, small: Path, tmp_path: Path, umask_of: int
) -> None:
    images = tmp_path / "in" / "tree"
    write_image_folder(images, [14, 11, 9])
    out = tmp_path / "out"
    out.mkdir()
    run, ckpt = out / "run", out / "run" / "checkpoints" / "last.safetensors"
    tiny = " ".join(f"--set {s}" for s in TINY)
    sweep = f"sweep --preset synthetic-lt-bs --data {small} --seeds 0 {tiny}"
    folder = f"prepare-data folder --root {images} --test-per-class 2"
    predict = f"predict {ckpt} {images} --workers 0 --out {out}/predict"
    commands = [
        f"prepare-data synthetic --num-classes 3 --out {out}/synth",
        f"prepare-data synthetic --num-classes 3 --out {out}/synth --overwrite",
        f"{folder} --image-size 16 --out {out}/folder",
        f"{folder} --storage lists --out {out}/folder-lists",
        f"train --preset synthetic-lt-bs --data {small} --out {run} {tiny} "
        "--set checkpoint_every_steps=2 --set log.to=[tensorboard]",
        f"eval {ckpt} --data {small} --out {out}/eval --confusion",
        f"eval {ckpt} --data {small}",  # into the run folder
        f"analyze-weights {ckpt} --data {small} --out {out}/weights --svg",
        f"analyze-weights {ckpt} --html {out}/pages/weights.html",
        f"report {run} --out {out}/report --svg",
        f"report {run} --html {out}/pages/report.html",
        f"report {run} --html {out}/pages/report.html --overwrite",
        f"{sweep} --out {out}/plan --plan",
        f"{sweep} --out {out}/slurm --slurm",
        f"{sweep} --out {out}/sweep",
        f"{predict}/p.csv",
        f"{predict}/p.csv --overwrite",
        f"{predict}/p.jsonl",
        f"export {ckpt} --format torchscript --out {out}/export",
    ]
    for command in commands:
        r = lwr(*command.split())
        assert r.code == 0, (command, r.err)
    # Each command wrote what it should (so the walk below covers it).
    assert (out / "synth" / "train.safetensors").is_file()
    assert (out / "folder" / "train.safetensors").is_file()
    assert (run / "checkpoints" / "last.state.safetensors").is_file()
    assert any((run / "tensorboard").iterdir())
    assert {"config.yaml", "metrics.jsonl", "run.json", "environment.json"} <= {
        p.name for p in run.iterdir()
    }
    assert (out / "eval" / "summary.json").is_file() and list((run / "eval").rglob("*.json"))
    assert (out / "report" / "report.md").is_file() and (out / "weights" / "summary.json").is_file()
    assert sorted(p.name for p in (out / "pages").iterdir()) == ["report.html", "weights.html"]
    assert (out / "plan" / "plan.sh").is_file() and (out / "slurm" / "sweep.sbatch").is_file()
    assert list((out / "sweep").rglob("last.safetensors"))
    assert len(list((out / "predict").iterdir())) == 4  # two outputs and their summaries
    assert (out / "export" / "model-card.md").is_file()
    scripts = {out / "plan" / "plan.sh", out / "slurm" / "sweep.sbatch"}
    executables = {p for p in scripts if os.access(p, os.X_OK)}
    assert out / "plan" / "plan.sh" in executables
    wrong = [w for top in sorted(out.iterdir()) for w in wrong_modes(top, umask_of, executables)]
    assert not wrong, f"under umask {umask_of:03o}:\n" + "\n".join(wrong)


def test_a_downloaded_weights_file_follows_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.hub downloads to a 0600 temporary file and moves it into its cache."""
    import torch

    from lwrcli.models import hub

    def download(url: str, dst: str, **kwargs: object) -> None:
        fd = os.open(dst, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    named = hub.NamedWeights("resnet18@test", "torchvision", "resnet18", url="https://x/w.pth")
    previous = os.umask(0o022)
    try:
        path = hub._from_torch_hub(named)
    finally:
        os.umask(previous)
    assert path == tmp_path / "hub" / "checkpoints" / "w.pth"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
