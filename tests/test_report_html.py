"""`lwr report --html` and `lwr analyze-weights --html` (issue 26): one self-contained page,
its numbers equal to `lwr report --json`, its size bounded, checked in a real browser.

The sweep (2 presets x 2 seeds, tiny) is trained once for the module; the size tests use
hand-made run folders and checkpoints (no training), so they stay quick.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shlex
import stat
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import browser
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lwrcli.checkpoint.files import save_checkpoint
from lwrcli.config import TrainConfig, config_to_yaml, load_config
from lwrcli.data.manifest import read_manifest, shot_group
from lwrcli.studies.report_charts import binned_means
from lwrcli.use.svg import block_means

TINY = ("model.width=8", "epochs=2", "batch_size=16", "dataset=any", "device=cpu", "eval_every=1")
MB = 1024 * 1024


def _main(*args: object) -> None:
    """`lwr ARGS` in this process (a module fixture has no capsys); must succeed."""
    from lwrcli.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, small: Path) -> Path:
    """A sweep of BS and BS + LWR, 2 seeds each, and its page `report.html`."""
    root = tmp_path_factory.mktemp("study")
    sets = [x for s in TINY for x in ("--set", s)]
    _main("sweep", "--preset", "synthetic-lt-bs", "--preset", "synthetic-lt-bs-lwr",
          "--seeds", "0,1", "--data", small, "--out", root / "sweep", *sets)  # fmt: skip
    _main("report", root / "sweep", "--html", root / "report.html")
    return root


class Page(HTMLParser):
    """Every tag's attributes, the text of <style>, and the results table's cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.styles: list[str] = []
        self.tags: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self._in_style = self._in_table = False
        self._cell: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = {k: v or "" for k, v in attrs}
        self.attrs += [(tag, k, v) for k, v in a.items()]
        self._in_style = tag == "style"
        if tag == "table" and a.get("id") == "results-table":
            self._in_table = True
        if self._in_table and tag == "tr" and ("data-group" in a or "data-paper" in a):
            self.rows.append({"attrs": a, "cells": {}})
        if self._in_table and tag == "td" and "data-key" in a and self.rows:
            self._cell = {**a, "text": ""}
            self.rows[-1]["cells"][a["data-key"]] = self._cell

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        if tag == "td":
            self._cell = None
        self._in_style = False if tag == "style" else self._in_style

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
        if self._cell is not None:
            self._cell["text"] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def external_references(page: Page) -> list[str]:
    """Anything in a src / href / url( that reaches out of the file."""
    found = [f"{t} {k}={v[:80]}" for t, k, v in page.attrs
             if k in ("src", "href", "xlink:href") and re.match(r"\s*(https?:)?//", v)]  # fmt: skip
    styles = [*page.styles, *(v for _, k, v in page.attrs if k == "style")]
    for css in styles:
        found += [u for u in re.findall(r"url\(([^)]*)\)", css) if re.search(r"https?:|//", u)]
    found += [f"{t} {k}" for t, k, v in page.attrs if k == "src" and not v.startswith("data:")]
    return found


# ---------------------------------------------------------------------------------------------
# The page of a small sweep


@pytest.mark.slow  # trains the module's sweep (4 tiny runs)
def test_the_page_is_self_contained(study: Path) -> None:
    page = parse(study / "report.html")
    text = (study / "report.html").read_text(encoding="utf-8")
    assert not external_references(page)
    assert "http://" not in text and "https://" not in text  # not even a namespace URI
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert "@import" not in "".join(page.styles) and "@font-face" not in "".join(page.styles)
    # What it holds: every section, curves, dots per class, heat maps, folded settings.
    for ident in ("results", "curves", "per-class", "geometry", "settings", "commands"):
        assert f'<section id="{ident}">' in text, ident
    assert text.count("<svg") >= 12 and "prefers-color-scheme:dark" in text
    assert text.count('href="data:image/png;base64,') == 2  # a heat map per group
    assert text.count("<details>") >= 3  # a settings fold per group, more curves
    # The commands: what each run recorded (here this test process's own command line) and
    # the `lwr train` line of each run of the sweep.
    env = json.loads((study / "sweep" / "bs" / "seed=0" / "environment.json").read_text())
    assert html.escape(shlex.join(env["argv"])) in text
    assert text.count("lwr train --preset synthetic-lt-bs") == 4
    assert "lwr.enabled" in text  # the setting that differs from the baseline
    assert text.count("<circle") >= 2 * 5  # per-class dots: 5 classes in each group


def number(text: str) -> float | None:
    return float(text) if text else None


@pytest.mark.slow
def test_the_table_holds_the_numbers_of_report_json(lwr, study: Path) -> None:
    r = lwr("report", study / "sweep", "--format", "json")
    assert r.code == 0, r.err
    rows = {row["group"]: row for row in json.loads(r.out)["rows"]}
    page = parse(study / "report.html")
    assert [row["attrs"]["data-group"] for row in page.rows] == list(rows)
    for row in page.rows:
        want, cells = rows[row["attrs"]["data-group"]], row["cells"]
        assert int(cells["n"]["data-value"]) == want["n"]
        for m in ("top1", "many", "medium", "few", "top5"):
            mean, std = want[m]["mean"], want[m]["std"]
            assert number(cells[m]["data-mean"]) == mean and number(cells[m]["data-std"]) == std
            shown = (
                "–"
                if mean is None
                else f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
            )
            assert cells[m]["text"] == shown
        for m in ("top1", "many", "medium", "few"):
            assert number(cells[f"delta_{m}"]["data-value"]) == want[f"delta_{m}"]
        assert cells["paper_top1"]["data-value"] == "" and want["paper_top1"] is None
    assert all(row[m]["mean"] is not None for row in rows.values() for m in ("top1", "few"))


@pytest.mark.slow
def test_runs_record_the_per_class_accuracy_eval_computes(lwr, study: Path, small: Path) -> None:
    """The list the page plots is the one `lwr eval` writes (per_class.csv), recomputed."""
    run = study / "sweep" / "bs-lwr" / "seed=1"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    r = lwr("eval", run / "checkpoints" / "last.safetensors", "--data", small,
            "--out", study / "eval")  # fmt: skip
    assert r.code == 0, r.err
    lines = (study / "eval" / "per_class.csv").read_text().splitlines()[1:]
    evaluated = [float(line.split(",")[-1]) for line in lines]
    assert last["test_per_class"] == pytest.approx(evaluated, abs=1e-4)
    # The shot-group accuracies the run recorded are the means of the list over their classes.
    counts = read_manifest(small).class_counts
    for group in ("many", "medium", "few"):
        members = [a for a, n in zip(last["test_per_class"], counts) if shot_group(n) == group]
        want = float(np.mean(members)) if members else None
        assert last[f"test_{group}"] == (pytest.approx(want, abs=1e-3) if members else None)


@pytest.mark.slow  # four headless Chromium runs (a few seconds each)
def test_a_real_browser_renders_the_page(study: Path, tmp_path: Path) -> None:
    if browser.find_chromium() is None:
        pytest.skip(browser.MISSING)
    from PIL import Image

    page = study / "report.html"
    dom = browser.dump_dom(page, tmp_path / "profile-dom")
    assert '<table id="results-table">' in dom.stdout and 'data-group="bs-lwr"' in dom.stdout
    assert not browser.console_messages(dom.stderr), dom.stderr[-2000:]
    shots = {}
    for width, dark in ((1280, False), (400, False), (400, True)):
        png = tmp_path / f"shot-{width}-{'dark' if dark else 'light'}.png"
        done = browser.screenshot(page, png, width, 2000, tmp_path / f"p{width}{dark}", dark)
        assert not browser.console_messages(done.stderr), done.stderr[-2000:]
        shots[(width, dark)] = Image.open(png).convert("RGB")
    for (width, dark), im in shots.items():
        assert im.size == (width, 2000)
        # Not blank: the plots' series colours are there (group 0 blue, group 1 orange, as
        # the stylesheet sets them) among several distinct saturated colours.
        pixels = np.asarray(im).reshape(-1, 3).astype(int)
        spread = pixels.max(1) - pixels.min(1)
        colourful = {tuple(p // 16) for p in pixels[spread > 60]}
        assert len(colourful) >= 6, (width, dark, len(colourful))
        palette = ("#4FA3E0", "#E69F00") if dark else ("#0072B2", "#E69F00")
        for colour in palette:
            rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
            near = (np.abs(pixels - rgb).max(1) <= 24).sum()
            assert near >= 30, (width, dark, colour, near)
        background = np.asarray(im)[5, 5].mean()
        assert background < 60 if dark else background > 240  # prefers-color-scheme followed


@pytest.mark.slow
def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The check above would see a page's console error or uncaught exception."""
    if browser.find_chromium() is None:
        pytest.skip(browser.MISSING)
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); missing();</script>")
    found = browser.console_messages(browser.dump_dom(bad, tmp_path / "profile").stderr)
    assert any("boom" in m for m in found) and any("missing" in m for m in found), found


# ---------------------------------------------------------------------------------------------
# Hand-made runs and checkpoints: size and the output contract, without training


class Head(torch.nn.Module):
    def __init__(self, c: int, d: int = 64) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(d, c)


def counts_for(c: int) -> list[int]:
    """An exponential long tail from 500 down to 5 train images (many, medium and few)."""
    return [int(500 * (5 / 500) ** (i / (c - 1))) for i in range(c)]


def make_study(root: Path, thetas: list[float], seeds: int, epochs: int, c: int) -> None:
    """Run folders as `lwr train` leaves them (config.yaml, run.json, metrics.jsonl with a
    per-class list at every epoch, checkpoints/last.safetensors with a random (C, 64) head):
    one group per θ of the CIFAR-100 BS + LWR recipe."""
    rng = np.random.default_rng(0)
    counts = counts_for(c)
    for g, theta in enumerate(thetas):
        for seed in range(seeds):
            run = root / f"theta={theta}" / f"seed={seed}"
            (run / "checkpoints").mkdir(parents=True)
            sets = [f"seed={seed}", f"epochs={epochs}", f"lwr.theta={theta}"]
            cfg = load_config("cifar100-lt-ir100-bs-lwr", overrides=sets)
            (run / "config.yaml").write_text(config_to_yaml(cfg))
            (run / "run.json").write_text(json.dumps({"dataset_fingerprint": "fp"}))
            records = []
            for e in range(1, epochs + 1):
                rec = {"epoch": e, "loss": 4 / e, "task": 4 / e, "lwr": 0.01, "lr": 0.1,
                       "lwr_share": 0.05, "geom_pairs_above": int(rng.integers(0, 50)),
                       "geom_cos_max": 0.5, "geom_norm_ratio": 1.5}  # fmt: skip
                acc = np.clip(rng.normal(40 + g, 20, c), 0, 100)
                rec.update({"test_top1": float(acc.mean()), "test_top5": 80.0,
                            "test_many": 60.0, "test_medium": 40.0, "test_few": 20.0,
                            "test_per_class": [round(float(a), 4) for a in acc]})  # fmt: skip
                records.append(json.dumps(rec))
            (run / "metrics.jsonl").write_text("\n".join(records) + "\n")
            torch.manual_seed(100 * g + seed)
            names = [f"c{i}" for i in range(c)]
            save_checkpoint(run / "checkpoints" / "last.safetensors", Head(c), cfg, counts,
                            names, epochs, {}, "fc.weight")  # fmt: skip


def test_a_36_run_table_stays_under_5_mb(lwr, tmp_path: Path) -> None:
    """12 groups x 3 seeds, 200 epochs each evaluated, C = 100: the CIFAR table's shape."""
    make_study(tmp_path / "sweep", [round(-0.5 + 0.1 * k, 1) for k in range(12)], 3, 200, 100)
    r = lwr("report", tmp_path / "sweep", "--html", tmp_path / "r.html")
    assert r.code == 0, r.err
    size = (tmp_path / "r.html").stat().st_size
    assert size < 5 * MB, size
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.count('href="data:image/png;base64,') == 12 and "(12 groups, 36 runs)" in text
    assert not external_references(parse(tmp_path / "r.html"))


def _cosines_by_loops(w: np.ndarray, counts: list[int], b: int, i: int, j: int) -> float:
    """Block (i, j) of the cosine map ordered head -> tail, averaged with plain loops."""
    order = sorted(range(len(counts)), key=lambda k: (-counts[k], k))
    rows, cols = order[i * b : (i + 1) * b], order[j * b : (j + 1) * b]
    total = 0.0
    for a in rows:
        for c in cols:
            total += float(w[a] @ w[c] / (np.linalg.norm(w[a]) * np.linalg.norm(w[c])))
    return total / (len(rows) * len(cols))


def test_a_1000_class_checkpoint_gives_block_means_under_5_mb(lwr, tmp_path: Path) -> None:
    from PIL import Image

    c = 1000
    torch.manual_seed(0)
    cfg = TrainConfig(name="big", lwr={"enabled": True, "theta": 0.2})
    ckpt = tmp_path / "big.safetensors"
    counts = counts_for(c)
    save_checkpoint(ckpt, Head(c), cfg, counts, [f"c{i}" for i in range(c)], 1, {}, "fc.weight")
    r = lwr("analyze-weights", ckpt, "--html", tmp_path / "big.html")
    assert r.code == 0, r.err
    text = (tmp_path / "big.html").read_text(encoding="utf-8")
    assert len(text.encode()) < 5 * MB
    assert "shown as 8×8 block means of the 1000×1000 map" in text
    assert not external_references(parse(tmp_path / "big.html"))
    # The heat map's cells are the block means, checked against plain loops on a few blocks.
    png = re.search(r'href="data:image/png;base64,([^"]+)"', text).group(1)  # type: ignore[union-attr]
    cells = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))  # palette indices
    assert cells.shape == (125, 125)
    w = load_file(str(ckpt))["fc.weight"].double().numpy()
    for i, j in ((0, 0), (0, 124), (60, 3), (124, 124), (17, 99)):
        mean = _cosines_by_loops(w, counts, 8, i, j)
        assert abs(int(cells[i, j]) - round((mean + 1) / 2 * 255)) <= 1, (i, j, mean)


def test_a_multi_head_checkpoint_shows_every_head(lwr, tmp_path: Path) -> None:
    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h1, self.h2 = torch.nn.Linear(8, 6), torch.nn.Linear(8, 6)

    cfg = TrainConfig(name="two", lwr={"enabled": True, "theta": 0.2})
    ckpt = tmp_path / "two.safetensors"
    extra = {"classifier_keys": json.dumps(["h1.weight", "h2.weight"])}
    save_checkpoint(ckpt, Heads(), cfg, counts_for(6), list("abcdef"), 1, {}, "h1.weight", extra)
    r = lwr("analyze-weights", ckpt, "--html", tmp_path / "two.html", "--out", tmp_path / "a")
    assert r.code == 0, r.err
    text = (tmp_path / "two.html").read_text(encoding="utf-8")
    assert "Cosines: two · expert 1" in text and "Cosines: two · expert 2" in text
    assert "two · expert 2</td>" in text and "same class" in text
    assert (tmp_path / "a" / "summary.json").is_file()  # --out and --html together


def test_the_page_follows_the_output_contract(lwr, tmp_path: Path) -> None:
    make_study(tmp_path / "sweep", [0.2, 0.4], 1, 3, 5)
    page = tmp_path / "out" / "report.html"
    previous = os.umask(0o077)
    try:
        r = lwr("report", tmp_path / "sweep", "--html", page)
    finally:
        os.umask(previous)
    assert r.code == 0, r.err
    assert stat.S_IMODE(page.stat().st_mode) == 0o600  # the umask's mode, not mkstemp's
    page.write_text("mine")
    r = lwr("report", tmp_path / "sweep", "--html", page)
    assert r.code == 2 and "--overwrite" in r.err and page.read_text() == "mine"
    r = lwr("report", tmp_path / "sweep", "--html", page, "--overwrite")
    assert r.code == 0 and page.read_text().startswith("<!DOCTYPE html>")
    for bad in (tmp_path / "report.txt", tmp_path / "out"):
        r = lwr("report", tmp_path / "sweep", "--html", bad)
        assert r.code == 2 and "Traceback" not in r.err, r.err
    ckpt = tmp_path / "sweep" / "theta=0.2" / "seed=0" / "checkpoints" / "last.safetensors"
    r = lwr("analyze-weights", ckpt)
    assert r.code == 2 and "--html" in r.err
    assert sorted(p.name for p in page.parent.iterdir()) == ["report.html"]  # no temp left


def test_paper_only_rows_are_marked_as_in_the_json(lwr, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_study(sweep, [0.2, 0.4], 2, 2, 5)
    names = [f"theta={t}/seed={s}" for t in (0.2, 0.4) for s in (0, 1)]
    oltr = {"name": "OLTR", "reference": {"all": 41.9, "many": 61.8}, "source": "paper, T1",
            "data": None, "note": "", "data_dir": "/data"}  # fmt: skip
    record = {"command": {}, "runs": [{"name": n, "data": "/data"} for n in names]}
    (sweep / "sweep.json").write_text(json.dumps({**record, "paper_only": [oltr]}))
    r = lwr("report", sweep, "--format", "json", "--html", tmp_path / "p.html")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    page = parse(tmp_path / "p.html")
    kinds = [row["attrs"].get("data-group", "paper") for row in page.rows]
    assert kinds == [*(row["group"] for row in report["rows"]), "paper"]  # placed after them
    paper = page.rows[-1]
    assert paper["attrs"]["data-paper"] == "OLTR" and "paper" in paper["attrs"]["class"]
    assert (
        float(paper["cells"]["paper_top1"]["data-value"])
        == report["paper_only"][0]["reference"]["all"]
    )
    text = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert 'OLTR<span class="badge">paper only, not trained here</span>' in text


def test_runs_of_older_versions_use_the_per_class_csv_of_lwr_eval(lwr, tmp_path: Path) -> None:
    make_study(tmp_path / "sweep", [0.2], 1, 2, 5)
    run = tmp_path / "sweep" / "theta=0.2" / "seed=0"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for rec in records:
        del rec["test_per_class"]  # as lwr before issue 26 wrote them
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    r = lwr("report", tmp_path / "sweep", "--html", tmp_path / "old.html")
    assert r.code == 0, r.err
    old = (tmp_path / "old.html").read_text(encoding="utf-8")
    assert "no per-class accuracy recorded" in old and "lwr eval" in old
    (run / "eval" / "last").mkdir(parents=True)
    rows = ["class_id,class_name,train_count,shot_group,test_count,top1"]
    rows += [f"{k},c{k},{n},x,4,{10 * k + 5}" for k, n in enumerate(counts_for(5))]
    (run / "eval" / "last" / "per_class.csv").write_text("\n".join(rows) + "\n")
    r = lwr("report", tmp_path / "sweep", "--html", tmp_path / "new.html")
    assert r.code == 0, r.err
    section = (tmp_path / "new.html").read_text(encoding="utf-8").split('id="per-class"')[1]
    section = section.split("</section>")[0]
    assert "no per-class accuracy" not in section and section.count("<circle") >= 5


def test_binned_means_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    counts = np.array(counts_for(50))
    acc = rng.uniform(0, 100, 50)
    acc[7] = np.nan  # an untested class is left out
    xs, ys = binned_means(counts, acc, bins=5)
    edges = np.linspace(np.log10(counts.min()), np.log10(counts.max()) + 1e-9, 6)
    want_x, want_y = [], []
    for b in range(5):
        members = [k for k in range(50) if not np.isnan(acc[k])
                   and edges[b] <= np.log10(counts[k]) < edges[b + 1]]  # fmt: skip
        if members:
            want_x.append(float(np.exp(np.mean([np.log(counts[k]) for k in members]))))
            want_y.append(float(np.mean([acc[k] for k in members])))
    assert xs == pytest.approx(want_x) and ys == pytest.approx(want_y)


def test_block_means_of_a_map_that_does_not_divide() -> None:
    m = np.random.default_rng(2).normal(size=(10, 10))
    shown, step = block_means(m, 4)  # B = ceil(10 / 4) = 3: blocks 3, 3, 3, 1
    assert step == 3 and shown.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            block = m[3 * i : 3 * i + 3, 3 * j : 3 * j + 3]
            assert shown[i, j] == pytest.approx(block.mean())


def test_the_docs_index_lists_all_ten_commands() -> None:
    from test_docs import _cli_commands

    top = [c for c in _cli_commands() if c.count(" ") == 1]
    assert len(top) == 10 and {"lwr predict", "lwr export"} <= set(top), top
    index = (Path(__file__).resolve().parents[1] / "docs" / "index.md").read_text()
    flow = index.split("## The flow", 1)[1].split("## ", 1)[0]
    assert [c for c in top if f"\n{c} " not in flow] == []


def test_class_and_rank_axes_have_integer_ticks(tmp_path: Path, monkeypatch) -> None:
    """norms.png and the cosine heat maps (matplotlib) and the page's heat maps (SVG): no
    2.5 on an axis of classes; every title names the checkpoint it shows."""
    import matplotlib.pyplot as plt

    from lwrcli.use import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    counts, norms = [np.array(counts_for(5))], [np.linspace(2, 1, 5)]
    plots.norms_vs_count(tmp_path / "n.png", counts, norms, ["bs/last"])
    plots.cosine_heatmap(tmp_path / "c.png", np.eye(5), [("many", 0), ("few", 3)], "bs/last")
    rank, heat = figures[0].axes[1], figures[1].axes[0]
    for fig in figures:
        fig.canvas.draw()
    for axis, lim in ((rank.xaxis, rank.get_xlim()), (heat.xaxis, heat.get_xlim()),
                      (heat.yaxis, heat.get_ylim())):  # fmt: skip
        shown = [t for t in axis.get_majorticklocs() if min(lim) <= t <= max(lim)]
        assert shown and all(float(t).is_integer() for t in shown), shown
    assert "bs/last" in figures[0]._suptitle.get_text() and "bs/last" in heat.get_title()
    for fig in figures:
        plt.close(fig)
    from lwrcli.use.svg import heatmap

    svg_text = heatmap("t", np.eye(5), 5, 1, [("many", 0)], "class rank")
    labels = re.findall(r'class="tick"[^>]*text-anchor="(?:middle|end)">([^<]+)<', svg_text)
    assert labels and all(re.fullmatch(r"\d+", t) for t in labels), labels
