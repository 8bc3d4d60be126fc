"""Weight analysis against numpy loops, and the files analyze_checkpoints writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from lwrcli.checkpoint.files import save_checkpoint
from lwrcli.config import TrainConfig
from lwrcli.data.manifest import make_manifest, write_manifest
from lwrcli.errors import UserError
from lwrcli.use.analysis import analyze_checkpoints, summary_table, weight_stats
from lwrcli.use.plots import _block_mean

PNG = b"\x89PNG\r\n\x1a\n"


def numpy_r(w: np.ndarray, theta: float, power: int, proj: bool) -> float:
    """R(W) from LWR.md, written with loops over ordered pairs in float64."""
    v = w.astype(np.float64).copy()
    if proj:
        u = v.mean(0) / np.linalg.norm(v.mean(0))
        v = v - np.outer(v @ u, u)
    c = len(v)
    total = 0.0
    for i in range(c):
        for j in range(c):
            if i != j:
                den = max(np.linalg.norm(v[i]), 1e-12) * max(np.linalg.norm(v[j]), 1e-12)
                total += max(0.0, v[i] @ v[j] / den - theta) ** power
    return total / (c * (c - 1))


def test_stats_on_a_hand_made_matrix() -> None:
    # rows 0,1 many; 2 medium; 3 few. cos(0,1)=0.6, cos(0,2)=0, cos(1,2)=0.8, row 3 orthogonal.
    w = torch.tensor([[1.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0.5]])
    counts = [300, 200, 50, 5]
    s = weight_stats(w, counts, theta=0.4, power=1, proj=False)
    assert s["cosine"].dtype == np.float64 and s["cosine"][1, 2] == pytest.approx(0.8)
    assert s["overall"] == pytest.approx({"mean": (0.6 + 0.0 + 0.8) / 6, "max": 0.8, "pairs": 6})
    assert s["within"]["many"] == pytest.approx({"mean": 0.6, "max": 0.6, "pairs": 1})
    assert s["within"]["medium"] == {"mean": None, "max": None, "pairs": 0}
    assert s["between"]["many-medium"] == pytest.approx({"mean": 0.4, "max": 0.8, "pairs": 2})
    assert s["between"]["many-few"]["max"] == pytest.approx(0.0)
    assert s["between"]["all"] == pytest.approx({"mean": 0.8 / 5, "max": 0.8, "pairs": 5})
    # hinge at θ = 0.4 keeps only (0,1): 0.2 and (1,2): 0.4, each counted twice, over 4·3 pairs
    assert s["r_lwr"]["value"] == pytest.approx(2 * (0.2 + 0.4) / 12)
    assert s["r_lwr"]["value"] == pytest.approx(numpy_r(w.numpy(), 0.4, 1, False))
    assert s["norm_ratio_head_tail"] == pytest.approx(1.0 / 0.5)
    assert s["norm_ratio_top_bottom"] == pytest.approx(1.0 / 0.5)
    assert s["norms"] == pytest.approx([1.0, 1.0, 2.0, 0.5])
    assert s["order"] == [0, 1, 2, 3]


def test_orthogonal_rows_have_zero_cosines() -> None:
    s = weight_stats(torch.eye(5) * 3, [500, 400, 50, 10, 2], theta=0.0, proj=False)
    assert s["overall"] == {"mean": 0.0, "max": 0.0, "pairs": 10}
    assert s["r_lwr"]["value"] == 0.0
    assert s["norm_count_corr"] is None  # all norms equal: no correlation to speak of


def test_empty_groups_give_none() -> None:
    s = weight_stats(torch.randn(3, 4), [500, 400, 300], theta=0.4)
    assert s["norm_ratio_head_tail"] is None  # no few-shot class
    assert s["within"]["few"]["mean"] is None and s["between"]["all"]["pairs"] == 0
    assert s["norm_ratio_top_bottom"] is not None


@pytest.mark.parametrize(("power", "proj"), [(1, True), (2, False)])
def test_random_matrix_against_numpy_loops(power: int, proj: bool) -> None:
    rng = np.random.default_rng(power)
    c, d = 23, 6
    w = rng.normal(size=(c, d)) + 0.8  # a shared direction, so cosines are mostly positive
    counts = np.array([600, 5, 300, 40, 40, 2, 150, 80, 7, 19, 20, 100, 101] + [30] * 10)
    s = weight_stats(torch.from_numpy(w).float(), counts.tolist(), 0.3, power, proj)

    norms = np.sqrt((w**2).sum(1))
    cos = np.array([[w[i] @ w[j] / (norms[i] * norms[j]) for j in range(c)] for i in range(c)])
    assert np.allclose(s["cosine"], cos, atol=1e-6)
    group = np.where(counts > 100, "many", np.where(counts < 20, "few", "medium"))
    same, cross = {"many": [], "medium": [], "few": []}, []
    for i in range(c):
        for j in range(i + 1, c):
            (same[group[i]] if group[i] == group[j] else cross).append(cos[i, j])
    for g, vals in same.items():
        assert s["within"][g]["mean"] == pytest.approx(np.mean(vals))
        assert s["within"][g]["max"] == pytest.approx(np.max(vals))
        assert s["within"][g]["pairs"] == len(vals)
    assert s["between"]["all"]["mean"] == pytest.approx(np.mean(cross))
    assert s["between"]["all"]["max"] == pytest.approx(np.max(cross))
    upper = cos[np.triu_indices(c, 1)]
    assert s["overall"]["mean"] == pytest.approx(upper.mean())
    assert s["overall"]["max"] == pytest.approx(upper.max())
    assert s["r_lwr"]["value"] == pytest.approx(numpy_r(w, 0.3, power, proj), rel=1e-5)

    assert s["norm_ratio_head_tail"] == pytest.approx(
        norms[group == "many"].mean() / norms[group == "few"].mean(), rel=1e-6
    )
    # 10% of 23 -> 2 classes each end: counts 600, 300 vs 2, 5
    assert s["norm_ratio_top_bottom"] == pytest.approx(
        norms[[0, 2]].mean() / norms[[5, 1]].mean(), rel=1e-6
    )
    x, y = norms - norms.mean(), np.log(counts) - np.log(counts).mean()
    corr = (x * y).sum() / np.sqrt((x**2).sum() * (y**2).sum())
    assert s["norm_count_corr"] == pytest.approx(corr, rel=1e-5)
    assert s["order"][:3] == [0, 2, 6] and s["order"][-2:] == [1, 5]
    assert s["order"].index(3) < s["order"].index(4)  # ties keep class-id order


def test_block_mean_for_large_heat_maps() -> None:
    m = np.arange(25, dtype=np.float64).reshape(5, 5)
    shown, step = _block_mean(m, 3)  # ceil(5 / 3) = 2: blocks of 2, the last one partial
    assert step == 2 and shown.shape == (3, 3)
    assert shown[0, 0] == np.mean([0, 1, 5, 6]) and shown[2, 2] == 24.0
    assert shown[0, 2] == np.mean([4, 9])


class Tiny(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, c)


def _ckpt(path: Path, c: int, lwr: bool) -> Path:
    torch.manual_seed(c + lwr)
    cfg = TrainConfig(name=path.stem, lwr={"enabled": lwr, "theta": 0.2})
    counts = [int(x) for x in np.linspace(400, 3, c)]
    save_checkpoint(path, Tiny(c), cfg, counts, [f"c{i}" for i in range(c)], 1, {}, "fc.weight")
    return path


def test_end_to_end_files(tmp_path: Path) -> None:
    a = _ckpt(tmp_path / "bs.safetensors", 8, False)
    b = _ckpt(tmp_path / "bs-lwr.safetensors", 8, True)
    out = tmp_path / "out"
    summary = analyze_checkpoints([a, b], out, formats=("png", "svg"))
    for name in ("norms", "cosine_hist", "cosine_bs", "cosine_bs-lwr"):
        png = (out / f"{name}.png").read_bytes()
        assert len(png) > 1000 and png.startswith(PNG)
        assert "<svg" in (out / f"{name}.svg").read_text()
    data = json.loads((out / "summary.json").read_text())
    assert [e["label"] for e in data["checkpoints"]] == ["bs", "bs-lwr"]
    assert all((out / f).is_file() for f in data["files"])
    first = data["checkpoints"][0]
    assert "cosine" not in first and first["lwr_enabled"] is False
    assert data["checkpoints"][1]["r_lwr"]["theta"] == 0.2
    torch.manual_seed(8)  # the seed _ckpt used for "bs"
    w = Tiny(8).fc.weight.detach().numpy().astype(np.float64)
    assert first["norms"] == pytest.approx(np.sqrt((w**2).sum(1)).tolist(), rel=1e-6)
    console = Console(record=True, width=160)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "bs-lwr" in text and f"{first['overall']['mean']:.3f}" in text


def test_results_are_never_replaced_silently(tmp_path: Path) -> None:
    """Issue 24: a folder with files is refused (named, nothing written); --overwrite replaces
    it whole, so no cosine_<label>.png of an earlier call stays beside the new summary."""
    a = _ckpt(tmp_path / "bs.safetensors", 8, False)
    b = _ckpt(tmp_path / "bs-lwr.safetensors", 8, True)
    out = tmp_path / "out"
    analyze_checkpoints([a, b], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match=r"already holds files .*--overwrite") as err:
        analyze_checkpoints([a], out)
    assert str(out) in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = analyze_checkpoints([a], out, overwrite=True)
    assert [e["label"] for e in again["checkpoints"]] == ["bs"]
    assert sorted(p.name for p in out.iterdir()) == sorted(again["files"])
    assert not (out / "cosine_bs-lwr.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bs-lwr.safetensors",
        "bs.safetensors",
        "out",
    ]
    # Even with --overwrite, a folder holding an input (or a run, a dataset) is not results.
    (tmp_path / "inside").mkdir()
    c = _ckpt(tmp_path / "inside" / "c.safetensors", 8, False)
    with pytest.raises(UserError, match="not results"):
        analyze_checkpoints([c], tmp_path / "inside", overwrite=True)
    assert c.is_file()


def test_names_that_would_collide(tmp_path: Path) -> None:
    a = _ckpt(tmp_path / "hist.safetensors", 6, False)
    summary = analyze_checkpoints([a, a], tmp_path / "out")
    assert [e["label"] for e in summary["checkpoints"]] == ["hist", "hist-2"]
    files = {p.name for p in (tmp_path / "out").glob("*.png")}
    # the histogram keeps cosine_hist.png; the heat maps step aside (labels hist, hist-2)
    assert files == {"norms.png", "cosine_hist.png", "cosine_hist-2.png", "cosine_hist-2-2.png"}
    assert summary["checkpoints"][0]["files"] == ["cosine_hist-2.png"]


def test_dataset_counts_and_mismatch(tmp_path: Path) -> None:
    a = _ckpt(tmp_path / "a.safetensors", 8, False)
    data = tmp_path / "data"
    data.mkdir()

    def manifest(c: int) -> None:
        fields = {"name": "x", "source": "synthetic", "storage": "arrays"}
        names, counts = [f"n{i}" for i in range(c)], [150] * (c - 1) + [4]
        write_manifest(
            data,
            make_manifest(
                **fields,
                class_names=names,
                class_counts=counts,
                splits={"train": sum(counts)},
                fingerprint="f",
            ),
        )

    manifest(5)
    with pytest.raises(UserError, match="Class-count mismatch"):
        analyze_checkpoints([a], tmp_path / "out", data)
    manifest(8)
    s = analyze_checkpoints([a], tmp_path / "out", data)["checkpoints"][0]
    assert s["class_counts"] == [150] * 7 + [4] and s["class_names"][0] == "n0"
    assert s["group_sizes"] == {"many": 7, "medium": 0, "few": 1}


def test_bad_out_and_inputs(tmp_path: Path) -> None:
    a = _ckpt(tmp_path / "a.safetensors", 4, False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        analyze_checkpoints([a], tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    with pytest.raises(UserError, match="at least one"):
        analyze_checkpoints([], tmp_path / "o")
    with pytest.raises(UserError, match="does not exist"):
        analyze_checkpoints([tmp_path / "missing.safetensors"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_sweep_runs_are_named_within_their_sweep(tmp_path: Path, synthetic_data: Path) -> None:
    """Every seed folder of a sweep is called seed=N; the label is the sweep's own run name."""
    from lwrcli.studies.sweep import build_spec, check_or_write_record, plan_sweep, sweep_record

    spec = build_spec(
        ["synthetic-lt-bs", "synthetic-lt-bs-lwr"], [], None, "0", ["lwr.theta=0.2,0.4"], None
    )
    runs = plan_sweep(spec, {"": synthetic_data})
    sweep = tmp_path / "sweep"
    check_or_write_record(sweep, sweep_record(spec, runs))
    paths = []
    for run in runs:
        ckpt_dir = sweep / run.name / "checkpoints"
        ckpt_dir.mkdir(parents=True)
        paths.append(_ckpt(ckpt_dir / "last.safetensors", 6, True))
    loose = tmp_path / "loose-run" / "checkpoints"
    loose.mkdir(parents=True)
    paths.append(_ckpt(loose / "best.safetensors", 6, False))
    stray = sweep / "extra" / "checkpoints"  # under the sweep but not one of its runs
    stray.mkdir(parents=True)
    paths.append(_ckpt(stray / "last.safetensors", 6, False))
    summary = analyze_checkpoints(paths, tmp_path / "out")
    labels = [e["label"] for e in summary["checkpoints"]]
    names = [r.name for r in runs]
    assert "bs/theta=0.2/seed=0" in names and "bs-lwr/theta=0.4/seed=0" in names
    assert labels == [*(f"{n}/last" for n in names), "loose-run/best", "extra/last"]
    # Plot file names stay flat: the slashes of a run name become underscores.
    assert (tmp_path / "out" / "cosine_bs-lwr_theta_0.4_seed_0_last.png").is_file()


def test_labels_name_the_run_and_the_checkpoint(lwr, tmp_path: Path) -> None:
    """Issue 24: best and last of one run are runA/best and runA/last, not run and run-2;
    loose files of one name in two folders are told apart by their folders."""
    ckpts = tmp_path / "runA" / "checkpoints"
    ckpts.mkdir(parents=True)
    best = _ckpt(ckpts / "best.safetensors", 6, True)
    last = _ckpt(ckpts / "last.safetensors", 6, True)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    x, y = (
        _ckpt(tmp_path / "x" / "m.safetensors", 6, False),
        _ckpt(tmp_path / "y" / "m.safetensors", 6, False),
    )
    summary = analyze_checkpoints([best, last, x, y], tmp_path / "out")
    assert [e["label"] for e in summary["checkpoints"]] == ["runA/best", "runA/last", "x/m", "y/m"]
    assert (tmp_path / "out" / "cosine_runA_best.png").is_file()
    r = lwr("analyze-weights", best, last, "--out", tmp_path / "cli")  # the table: whole labels
    assert r.code == 0, r.err
    assert "runA/best" in r.out and "runA/last" in r.out
