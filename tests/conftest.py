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


# The small synthetic dataset most tests train on: 5 classes, 90 train images (40, 23, 14, 8, 5:
# 6 steps of 16 per epoch), 4 test images per class. Built once per session.
SMALL = dict(num_classes=5, n_max=40, test_per_class=4, imbalance_factor=8, seed=1)


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lwrcli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("small") / "data"
    prepare_synthetic(out, **SMALL)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="session")
def small_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`small` with another seed and a validation split (3 per class): model selection."""
    from lwrcli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("small_val") / "data"
    prepare_synthetic(
        out, num_classes=5, n_max=40, test_per_class=4, imbalance_factor=8, val_per_class=3
    )
    return out


@pytest.fixture(scope="session")
def small_ir10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 classes, 63 train images (counts 30, 16, 9, 5, 3), 5 test images per class."""
    from lwrcli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("small_ir10") / "data"
    prepare_synthetic(out, num_classes=5, n_max=30, test_per_class=5, imbalance_factor=10, seed=0)
    return out


@pytest.fixture(scope="session")
def small16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 classes of 16-px images, 24 ... 4 train images per class: ResNet-32 stays cheap."""
    from lwrcli.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("small16") / "data"
    prepare_synthetic(
        out, num_classes=5, n_max=24, test_per_class=2, imbalance_factor=6, image_size=16, seed=1
    )
    return out


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
