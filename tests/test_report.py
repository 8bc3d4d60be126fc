"""`lwr report` on hand-made run folders: numbers against numpy, grouping, exclusions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lwrcli.config import config_to_yaml, load_config
from lwrcli.studies.report import build_report
from lwrcli.studies.report_render import render

SCORES = ("top1", "top5", "many", "medium", "few")


def make_run(
    root: Path,
    name: str,
    preset: str,
    seed: int,
    test: dict[str, float],
    *,
    sets: tuple[str, ...] = (),
    epochs: int = 3,
    done: int | None = None,
    fingerprint: str = "fp-a",
    val: list[float] | None = None,
) -> Path:
    """A run folder as `lwr train` leaves it: config.yaml, run.json, metrics.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    cfg = load_config(preset, overrides=[f"seed={seed}", f"epochs={epochs}", *sets])
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    (run / "run.json").write_text(json.dumps({"dataset_fingerprint": fingerprint}))
    lines = []
    for e in range(1, (epochs if done is None else done) + 1):
        rec = {"epoch": e, "task": 1.0 / e, "lr": 0.1, "lwr_share": 0.01 * e}
        # Earlier epochs score lower; the last epoch holds `test`.
        rec.update({f"test_{k}": v - (epochs - e) for k, v in test.items()})
        if val is not None:
            rec["val_top1"] = val[e - 1]
        lines.append(json.dumps(rec))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _scores(rng: np.random.Generator) -> dict[str, float]:
    return {k: float(v) for k, v in zip(SCORES, rng.uniform(20, 80, len(SCORES)))}


def test_means_std_deltas_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = [_scores(rng) for _ in range(3)]
    lwr = [_scores(rng) for _ in range(3)]
    for s in range(3):
        make_run(tmp_path, f"bs/seed={s}", "synthetic-lt-bs", s, base[s])
        make_run(tmp_path, f"bs-lwr/seed={s}", "synthetic-lt-bs-lwr", s, lwr[s])
    # Same settings on another prepared dataset: a group of its own, never mixed in.
    make_run(tmp_path, "other/seed=0", "synthetic-lt-bs", 0, _scores(rng), fingerprint="fp-b")
    # Unfinished: listed, excluded.
    make_run(tmp_path, "bs-lwr/seed=3", "synthetic-lt-bs-lwr", 3, _scores(rng), done=1)

    report = build_report([tmp_path], "test", baseline="synthetic-lt-bs")
    groups = {g.label: g for g in report["groups"]}
    assert len(groups) == 3
    g_base = next(
        g
        for g in report["groups"]
        if g.runs[0].fingerprint == "fp-a" and not g.config["lwr"]["enabled"]
    )
    g_lwr = next(g for g in report["groups"] if g.config["lwr"]["enabled"])
    g_other = next(g for g in report["groups"] if g.runs[0].fingerprint == "fp-b")
    assert g_lwr.label == "lwr=on" and "lwr=off" in g_base.label
    assert len(g_base.runs) == 3 and len(g_lwr.runs) == 3 and len(g_other.runs) == 1
    for m in SCORES:
        b = np.array([r[m] for r in base])
        w = np.array([r[m] for r in lwr])
        assert g_lwr.stats[m]["mean"] == pytest.approx(w.mean(), abs=1e-12)
        assert g_lwr.stats[m]["std"] == pytest.approx(w.std(ddof=1), abs=1e-12)
        assert g_lwr.stats[m]["n"] == 3
        assert g_lwr.delta[m] == pytest.approx(w.mean() - b.mean(), abs=1e-12)
        assert g_base.delta[m] == pytest.approx(0.0)
        assert g_other.delta[m] is None  # another dataset: no delta
        assert g_other.stats[m]["std"] is None
    assert [i["path"] for i in report["incomplete"]] == [str(tmp_path / "bs-lwr/seed=3")]
    assert report["incomplete"][0]["epochs_done"] == 1
    text = render(report, "md")
    assert "Incomplete, excluded" in text and "bs-lwr/seed=3" in text
    w = np.array([r["top1"] for r in lwr])
    assert f"{w.mean():.2f} ± {w.std(ddof=1):.2f}" in text
    data = json.loads(render(report, "json"))
    assert {r["group"] for r in data["rows"]} == set(groups)
    assert render(report, "csv").count("\n") == 4
    assert "\\begin{tabular}" in render(report, "latex")


def test_best_on_val_scored_never_test_and_paper_delta(tmp_path: Path, lwr) -> None:
    """Runs selecting on val are scored at their best val epoch; the paper's number comes
    from the config's reference; groups are labelled by what differs (θ)."""
    for theta, ref in ((0.2, 50.2), (0.6, 49.9)):
        for s in range(2):
            make_run(
                tmp_path,
                f"t{theta}/seed={s}",
                "synthetic-lt-bs-lwr",
                s,
                {k: 40.0 + s for k in SCORES},
                sets=(f"lwr.theta={theta}", f"reference={{all: {ref}}}"),
                val=[10.0, 30.0, 20.0],  # best on val: epoch 2
            )
    report = build_report([tmp_path], "test")
    labels = sorted(g.label for g in report["groups"])
    assert labels == ["θ=0.2", "θ=0.6"]
    for g in report["groups"]:
        assert {r.checkpoint for r in g.runs} == {"best on val (epoch 2)"}
        # Epoch 2 of 3 scores 1 below the last epoch: means 40.5 - 1.
        assert g.stats["top1"]["mean"] == pytest.approx(39.5)
        ref = g.config["reference"]["all"]
        row_text = render(report, "md")
        assert f"{ref:.1f} | {39.5 - ref:+.2f}" in row_text
    assert report["baseline"] is None  # every group has LWR on

    out = tmp_path / "out"
    r = lwr("report", tmp_path, "--out", out, "--format", "csv", "--baseline", "θ=0.2")
    assert r.code == 0, r.err
    assert (out / "report.csv").is_file() and (out / "report.json").is_file()
    assert (out / "curves.png").stat().st_size > 1000 and (out / "shots.png").is_file()
    r = lwr("report", tmp_path, "--baseline", "nope")
    assert r.code == 2 and "matches no group" in r.err
    r = lwr("report", tmp_path / "missing")
    assert r.code == 2 and "Traceback" not in r.err


def test_same_seed_twice_counts_once_and_inert_settings_are_not_named(tmp_path: Path) -> None:
    """A single-process run and a torchrun run of one config and seed are one replicate."""
    import os

    rng = np.random.default_rng(1)
    first, again, other = _scores(rng), _scores(rng), _scores(rng)
    a = make_run(tmp_path, "single/seed=0", "synthetic-lt-bs-lwr", 0, first)
    b = make_run(tmp_path, "torchrun/seed=0", "synthetic-lt-bs-lwr", 0, again)
    make_run(tmp_path, "single/seed=1", "synthetic-lt-bs-lwr", 1, other)
    os.utime(a / "metrics.jsonl", (1_000, 1_000))  # b finished later: b is the one used
    os.utime(b / "metrics.jsonl", (2_000, 2_000))
    # LWR off with a λ the run never used: grouped with the same baseline, λ not named.
    for s, lam in ((0, "10"), (1, "30")):
        make_run(
            tmp_path,
            f"bs/l{lam}/seed={s}",
            "synthetic-lt-bs",
            s,
            _scores(rng),
            sets=(f"lwr.lambda_max={lam}",),
        )

    report = build_report([tmp_path], "test")
    lwr_group = next(g for g in report["groups"] if g.config["lwr"]["enabled"])
    assert lwr_group.stats["top1"]["n"] == 2  # seeds, not runs
    assert sorted(r.path for r in lwr_group.runs) == sorted([b, tmp_path / "single/seed=1"])
    mean = (again["top1"] + other["top1"]) / 2
    assert lwr_group.stats["top1"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert [(k.path, o.path) for k, o in lwr_group.duplicates] == [(b, a)]
    text = render(report, "md")
    assert f"counted once (the most recently finished is used): {a}" in " ".join(text.split())
    labels = sorted(g.label for g in report["groups"])
    assert labels == ["lwr=off", "lwr=on"], labels  # one baseline group, no inert λ_max
    base = next(g for g in report["groups"] if not g.config["lwr"]["enabled"])
    assert base.stats["top1"]["n"] == 2


def test_report_out_is_never_replaced_silently(lwr, tmp_path: Path) -> None:
    """Issue 24: a second `report --out` into the same folder is refused (named, nothing
    changed); --overwrite replaces the folder whole, so TensorBoard events of the first call
    never mix with the new ones."""
    rng = np.random.default_rng(3)
    runs = tmp_path / "runs"
    for s in range(2):
        make_run(runs, f"bs/seed={s}", "synthetic-lt-bs", s, _scores(rng))
    out = tmp_path / "rep"
    r = lwr("report", runs, "--out", out)
    assert r.code == 0, r.err
    (out / "tensorboard" / "00" / "seed0").mkdir(parents=True, exist_ok=True)
    stale = out / "tensorboard" / "00" / "seed0" / "events.out.tfevents.old"
    stale.write_text("an earlier call's curves")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = lwr("report", runs, "--out", out)
    assert r.code == 2 and str(out) in r.err and "--overwrite" in r.err, r.err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    r = lwr("report", runs, "--out", out, "--overwrite")
    assert r.code == 0, r.err
    assert (out / "report.md").is_file() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "runs"]  # no staging left
    # A folder that holds the runs reported on is not results: refused even with --overwrite.
    r = lwr("report", runs, "--out", runs, "--overwrite")
    assert r.code == 2 and "not results" in r.err
    assert (runs / "bs" / "seed=0" / "metrics.jsonl").is_file()
