"""Weight analysis against numpy, and the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lwr import numpy_r

from lwrcli.analysis import analyze_checkpoints, weight_stats
from lwrcli.checkpoint import save_checkpoint
from lwrcli.config import TrainConfig
from lwrcli.data.manifest import make_manifest, write_manifest
from lwrcli.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def test_stats_on_a_hand_made_matrix() -> None:
    # rows 0,1 many; 2 medium; 3 few. cos(0,1)=0.6, cos(0,2)=0, cos(1,2)=0.8, row 3 orthogonal.
    w = torch.tensor([[1.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0.5]])
    counts = [300, 200, 50, 5]
    s = weight_stats(w, counts, theta=0.4, power=1, proj=False)
    assert s["overall"]["max"] == pytest.approx(0.8)
    assert s["overall"]["mean"] == pytest.approx(2 * (0.6 + 0.0 + 0.8) / 12)
    assert s["within"]["many"]["mean"] == pytest.approx(0.6)
    assert s["within"]["medium"]["pairs"] == 0 and s["within"]["medium"]["mean"] is None
    assert s["between"]["many-medium"]["mean"] == pytest.approx(0.4)
    assert s["between"]["many-few"]["max"] == pytest.approx(0.0)
    assert s["r_lwr"]["value"] == pytest.approx(numpy_r(w.numpy(), 0.4, 1, False))
    assert s["norm_ratio_head_tail"] == pytest.approx(1.0 / 0.5)
    assert s["norms"] == pytest.approx([1.0, 1.0, 2.0, 0.5])


def test_orthogonal_rows_have_zero_cosines() -> None:
    s = weight_stats(torch.eye(5) * 3, [500, 400, 50, 10, 2], theta=0.0, proj=False)
    assert s["overall"]["mean"] == 0.0 and s["overall"]["max"] == 0.0 and s["r_lwr"]["value"] == 0.0


class Tiny(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, c)


def _ckpt(path: Path, c: int, lwr: bool) -> Path:
    torch.manual_seed(c + lwr)
    cfg = TrainConfig(name=path.stem, lwr={"enabled": lwr, "theta": 0.2})
    counts = list(np.linspace(400, 3, c).astype(int))
    save_checkpoint(path, Tiny(c), cfg, counts, [f"c{i}" for i in range(c)], 1, {}, "fc.weight")
    return path


def test_end_to_end_files(tmp_path: Path) -> None:
    a = _ckpt(tmp_path / "bs.safetensors", 8, False)
    b = _ckpt(tmp_path / "bs-lwr.safetensors", 8, True)
    summary = analyze_checkpoints([a, b], tmp_path / "out", formats=("png", "svg"))
    out = tmp_path / "out"
    for name in ("norms", "cosine_hist", "cosine_bs", "cosine_bs-lwr"):
        assert (out / f"{name}.png").read_bytes().startswith(PNG)
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    data = json.loads((out / "summary.json").read_text())
    assert [e["label"] for e in data["checkpoints"]] == ["bs", "bs-lwr"]
    assert data["checkpoints"][1]["r_lwr"]["theta"] == 0.2
    assert summary["checkpoints"][0]["lwr_enabled"] is False


def test_mismatched_dataset_is_refused(tmp_path: Path) -> None:
    a = _ckpt(tmp_path / "a.safetensors", 8, False)
    data = tmp_path / "data"
    data.mkdir()
    write_manifest(
        data,
        make_manifest(
            name="x",
            source="synthetic",
            storage="arrays",
            class_names=["a"] * 5,
            class_counts=[5] * 5,
            splits={"train": 25},
            fingerprint="f",
        ),
    )
    with pytest.raises(UserError, match="Class-count mismatch"):
        analyze_checkpoints([a], tmp_path / "out", data)
    with pytest.raises(UserError, match="different numbers of classes"):
        analyze_checkpoints([a, _ckpt(tmp_path / "b.safetensors", 6, False)], tmp_path / "o")
