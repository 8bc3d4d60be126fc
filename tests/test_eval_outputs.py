"""Issue 24 for `lwr eval` and `lwr predict`: results never replaced silently (a folder per
evaluation, --overwrite replacing it whole), the dataset found from the run, the post-hoc
options shared with predict (same logits), and the output formats (headers, split-named
columns, 6 significant digits)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import train_args
from PIL import Image

from lwrcli.data.arrays import load_arrays

TINY = ["epochs=1", "model.width=4", "batch_size=16", "eval_every=0", "device=cpu"]


@pytest.fixture(scope="module")
def run(small_val: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run on `small_val` (which has a validation split)."""
    from lwrcli.cli.main import main

    run = tmp_path_factory.mktemp("eval-outputs") / "run"
    with pytest.raises(SystemExit) as done:
        main(train_args("synthetic-lt-ce", small_val, run, *TINY))
        raise SystemExit(0)
    assert done.value.code in (0, None)
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _long_floats(text: str) -> list[str]:
    """Numbers written with more than 6 significant digits."""
    found = re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)
    return [
        n for n in found if len(n.split("e")[0].replace("-", "").replace(".", "").lstrip("0")) > 6
    ]


def test_eval_never_replaces_results_silently(lwr, run: Path, small_val: Path) -> None:
    ckpt = run / "checkpoints" / "last.safetensors"
    evals = run / "eval"
    shutil.rmtree(evals, ignore_errors=True)
    # No --data: the run's own dataset (run.json), as predict and export find it.
    r = lwr("eval", ckpt, "--json", "--confusion")
    assert r.code == 0, r.err
    plain = evals / "last"
    assert json.loads((plain / "summary.json").read_text())["data_dir"] == str(small_val)
    assert (plain / "confusion.csv").is_file()
    before = _files(plain)

    # The same command again: refused, the folder named, nothing changed.
    r = lwr("eval", ckpt)
    assert r.code == 2 and str(plain) in r.err and "--overwrite" in r.err, r.err
    assert "Traceback" not in r.err and _files(plain) == before

    # Another adjustment goes to its own folder; the plain result stays.
    r = lwr("eval", ckpt, "--tau-norm", "1", "--posthoc-tau", "0.5", "--json")
    assert r.code == 0, r.err
    adjusted = evals / "last-taunorm1-posthoc0.5"
    summary = json.loads((adjusted / "summary.json").read_text())
    assert summary["tau_norm"] == 1 and summary["posthoc_tau"] == 0.5
    assert _files(plain) == before
    r = lwr("eval", ckpt, "--tau-norm-search", "--posthoc-tau-search", "--keep-bias")
    assert r.code == 0, r.err
    assert (evals / "last-taunorm-search-keepbias-posthoc-search" / "summary.json").is_file()

    # --overwrite replaces the folder whole: no confusion.csv of the earlier call stays.
    r = lwr("eval", ckpt, "--overwrite")
    assert r.code == 0, r.err
    assert sorted(p.name for p in plain.iterdir()) == ["per_class.csv", "summary.json"]
    assert not [p for p in evals.iterdir() if p.name.startswith(".")]  # no staging left

    # An explicit --out follows the same rule.
    out = run.parent / "mine"
    assert lwr("eval", ckpt, "--out", out).code == 0
    r = lwr("eval", ckpt, "--out", out, "--split", "val")
    assert r.code == 2 and "already holds files" in r.err
    # ... and never deletes what is not results, even with --overwrite.
    r = lwr("eval", ckpt, "--out", run, "--overwrite")
    assert r.code == 2 and "not results" in r.err
    assert (run / "checkpoints" / "last.safetensors").is_file()


def test_eval_finds_the_dataset_and_names_the_split(
    lwr, run: Path, small_val: Path, small: Path, tmp_path: Path
) -> None:
    ckpt = run / "checkpoints" / "last.safetensors"
    r = lwr("eval", ckpt, "--split", "val", "--batch-size", "3", "--workers", "0", "--overwrite")
    assert r.code == 0, r.err
    folder = run / "eval" / "last-val"
    lines = (folder / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class_id,class_name,train_count,shot_group,val_count,top1"
    assert all(line.split(",")[4] == "3" for line in lines[1:])  # 3 val images per class
    summary = (folder / "summary.json").read_text()
    assert json.loads(summary)["split"] == "val"
    assert not _long_floats(summary), summary

    # --data overrides the run's dataset; the folder says it is another one.
    r = lwr("eval", ckpt, "--data", small, "--overwrite")
    assert r.code == 0, r.err
    other = run / "eval" / f"last-on-{small.name}"
    assert json.loads((other / "summary.json").read_text())["data_dir"] == str(small)

    # A checkpoint outside a run folder, or a run whose dataset is gone: a clear error.
    loose = tmp_path / "loose.safetensors"
    shutil.copy(ckpt, loose)
    r = lwr("eval", loose)
    assert r.code == 2 and "needs --data" in r.err and "Traceback" not in r.err
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("eval"))
    info = json.loads((moved / "run.json").read_text())
    (moved / "run.json").write_text(json.dumps({**info, "data_dir": str(tmp_path / "gone")}))
    r = lwr("eval", moved / "checkpoints" / "last.safetensors")
    assert r.code == 2 and "not there any more" in r.err and "--data" in r.err
    assert not (moved / "eval").exists()


def test_confusion_csv_has_a_header(lwr, run: Path, tmp_path: Path) -> None:
    r = lwr(
        "eval", run / "checkpoints" / "last.safetensors", "--confusion", "--out", tmp_path / "e"
    )
    assert r.code == 0, r.err
    rows = [line.split(",") for line in (tmp_path / "e" / "confusion.csv").read_text().splitlines()]
    names = [
        line.split(",")[1]
        for line in (tmp_path / "e" / "per_class.csv").read_text().splitlines()[1:]
    ]
    assert rows[0] == ["true\\predicted", *names]
    assert [r[0] for r in rows[1:]] == names
    # Rows are true classes: each row sums to the class's test images (4 each).
    assert all(sum(map(int, r[1:])) == 4 for r in rows[1:])


def test_predict_applies_the_pair_eval_picks(
    lwr, run: Path, small_val: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval picks (τ-norm τ, post-hoc τ) on val; predict with those two options gives eval's
    logits (as probabilities) for the same test images, to 1e-5."""
    import lwrcli.use.evaluate as ev

    seen = {}
    real = ev.summarize

    def summarize(logits, targets, counts):
        seen["logits"] = logits.clone()
        return real(logits, targets, counts)

    monkeypatch.setattr(ev, "summarize", summarize)
    ckpt = run / "checkpoints" / "last.safetensors"
    r = lwr("eval", ckpt, "--tau-norm-search", "--posthoc-tau-search", "--json",
            "--out", tmp_path / "ev")  # fmt: skip
    assert r.code == 0, r.err
    picked = json.loads(r.out)
    tau_norm, posthoc_tau = picked["tau_norm"], picked["posthoc_tau"]
    want = torch.softmax(seen["logits"].double(), 1)

    images, _ = load_arrays(small_val, "test")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(len(images)):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(pngs / f"{i:02d}.png")
    out = tmp_path / "p.jsonl"
    r = lwr("predict", ckpt, pngs, "--out", out, "--top-k", "5", "--workers", "0",
            "--tau-norm", str(tau_norm), "--posthoc-tau", str(posthoc_tau))  # fmt: skip
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(images) == len(want)
    for i, row in enumerate(rows):
        assert row["path"] == str(pngs / f"{i:02d}.png")
        got = torch.zeros(5, dtype=torch.float64)
        got[row["ids"]] = torch.tensor(row["probs"], dtype=torch.float64)
        assert torch.allclose(got, want[i], atol=1e-5), (i, got, want[i])
    # The summary is named as the docs say (FILE.jsonl.summary.json) and names the adjustment
    # as eval's does.
    summary = json.loads((tmp_path / "p.jsonl.summary.json").read_text())
    assert summary["tau_norm"] == tau_norm and summary["posthoc_tau"] == posthoc_tau
    assert summary["adjustment"].startswith(f"τ-norm {tau_norm:g}, bias dropped; post-hoc")
    docs = (Path(__file__).parents[1] / "docs" / "predict.md").read_text()
    assert "`FILE.jsonl.summary.json`" in docs and "`FILE.csv.summary.json`" in docs


def test_predict_old_posthoc_flags_are_an_alias(lwr, run: Path, tmp_path: Path) -> None:
    ckpt, pngs = run / "checkpoints" / "last.safetensors", tmp_path / "pngs"
    pngs.mkdir()
    Image.new("RGB", (12, 12), (200, 30, 30)).save(pngs / "red.png")
    new = lwr("predict", ckpt, pngs, "--out", tmp_path / "new.csv", "--posthoc-tau", "0.7")
    assert new.code == 0, new.err
    old = lwr("predict", ckpt, pngs, "--out", tmp_path / "old.csv", "--posthoc", "logit-adjust",
              "--tau", "0.7")  # fmt: skip
    assert old.code == 0, old.err
    assert "deprecated" in old.err and "--posthoc-tau 0.7" in old.err
    assert (tmp_path / "new.csv").read_text() == (tmp_path / "old.csv").read_text()
    text = (tmp_path / "new.csv").read_text()
    assert not _long_floats(text), text  # probabilities at 6 significant digits
    for args, message in (
        (("--posthoc", "tau-norm", "--posthoc-tau", "1"), "not both"),
        (("--tau", "0.5"), "--tau goes with the deprecated --posthoc"),
        (("--posthoc", "magic"), "--posthoc must be"),
    ):
        r = lwr("predict", ckpt, pngs, "--out", tmp_path / "x.csv", *args)
        assert r.code == 2 and message in r.err, (args, r.err)
    assert not (tmp_path / "x.csv").exists()
