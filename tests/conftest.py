"""Shared fixtures: a CLI runner that returns exit code, stdout and stderr, and small data."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers (fakecifar, jpegtree)

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]


def train_args(preset: str, data: object, out: object, *sets: str) -> list[str]:
    """`train --preset P --data D --out R --set k=v ...` as an argument list (CLI or subprocess)."""
    args = ["train", "--preset", preset, "--data", str(data), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    return args


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def lwr(capsys: pytest.CaptureFixture[str]):
    """Run `lwr ARGS...` in-process; a traceback would surface as an exception here."""
    from lwrcli.cli.main import main

    def run(*args: object) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lwrcli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    prepare_synthetic(out, imbalance_factor=100, seed=0)
    return out


@pytest.fixture(scope="session")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared folder source of real JPEGs (4 classes): the worker DataLoader pipeline."""
    from jpegtree import write_image_folder

    from lwrcli.data.folder import prepare_folder

    root = tmp_path_factory.mktemp("jpegs")
    write_image_folder(root / "tree", [40, 30, 20, 12])
    prepare_folder(root / "tree", root / "data", test_per_class=2)
    return root / "data"
