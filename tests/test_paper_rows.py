"""Paper-only rows: listed in a sweep file, recorded by `lwr sweep` without training, printed
by `lwr report` marked "paper only, not trained here" beside the rows of their dataset."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from lwrcli.errors import UserError
from lwrcli.studies.paper_rows import MARK, PaperRow, check_rows
from lwrcli.studies.sweep import Entry, SweepSpec, load_sweep_file, sweep_record

SETS = ["epochs=1", "model.width=8", "batch_size=16", "eval_every=1", "log_every=2"]
OLTR = {"all": 41.2, "many": 61.8, "medium": 41.4, "few": 17.6}


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny prepared datasets that differ (seed), so their fingerprints differ."""
    from lwrcli.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("paperdata")
    for name, seed in (("a", 0), ("b", 1)):
        prepare_synthetic(
            root / name, num_classes=5, n_max=30, test_per_class=5, imbalance_factor=10, seed=seed
        )
    return root / "a", root / "b"


def _sweep_file(path: Path, oltr_all: float = 41.2) -> Path:
    spec = {
        "description": "two datasets, one trained row each, one paper-only row each",
        "entries": [
            {"preset": "synthetic-lt-bs", "name": "bs-a", "data": "a"},
            {"preset": "synthetic-lt-bs", "name": "bs-b", "data": "b"},
        ],
        "seeds": [0],
        "set": SETS,
        "paper_only": [
            {
                "name": "OLTR",
                "reference": {**OLTR, "all": oltr_all},
                "source": "Liu et al. CVPR 2019, Table 9 (test stand-in)",
                "data": "a",
            },
            {"name": "LFME", "reference": {"all": 43.8}, "source": "stand-in", "data": "b"},
        ],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _table_rows(md: str) -> list[str]:
    skip = ("| group", "| ---")
    return [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith(skip)]


def test_paper_rows_recorded_not_trained_and_reported_marked(
    lwr, tmp_path: Path, two_datasets: tuple[Path, Path]
) -> None:
    a, b = two_datasets
    file, out = _sweep_file(tmp_path / "sweep.yaml"), tmp_path / "sweep"
    data = ["--data", f"a={a}", "--data", f"b={b}"]
    r = lwr("sweep", "--file", file, *data, "--out", out)
    assert r.code == 0, r.err
    assert "Paper-only rows (not trained here): OLTR, LFME" in r.err
    assert "Sweep of 2 runs" in r.err  # paper-only rows never count as runs

    # Not trained: exactly the two entries' run folders exist, nothing named after a paper row.
    trained = sorted(str(p.parent.relative_to(out)) for p in out.rglob("config.yaml"))
    assert trained == ["bs-a/seed=0", "bs-b/seed=0"]
    assert not any("OLTR" in str(p) or "LFME" in str(p) for p in out.rglob("*"))
    record = json.loads((out / "sweep.json").read_text())
    assert [x["name"] for x in record["runs"]] == ["bs-a/seed=0", "bs-b/seed=0"]
    assert "paper_only" not in record["command"]
    rows = {x["name"]: x for x in record["paper_only"]}
    assert rows["OLTR"]["reference"] == OLTR and rows["OLTR"]["data_dir"] == str(a.resolve())
    assert rows["LFME"]["data_dir"] == str(b.resolve())

    # md: each paper-only row right after the trained row of its dataset, its number in the
    # "paper All" column, nothing measured; the notes give every number and the source.
    report = json.loads(lwr("report", out, "--format", "json").out)
    by_run = {Path(g["runs"][0]).parent.name: g["group"] for g in report["rows"]}
    md = lwr("report", out).out
    lines = _table_rows(md)
    assert len(lines) == 4
    assert lines[0].startswith(f"| {by_run['bs-a']} | 1 |")
    assert lines[1] == f"| OLTR ({MARK}) | – | – | – | – | – | – | – | 41.2 | – |"
    assert lines[2].startswith(f"| {by_run['bs-b']} | 1 |")
    assert lines[3] == f"| LFME ({MARK}) | – | – | – | – | – | – | – | 43.8 | – |"
    assert (
        f"OLTR ({MARK}): all 41.2, many 61.8, medium 41.4, few 17.6 "
        "(source: Liu et al. CVPR 2019, Table 9 (test stand-in); data a)." in md
    )

    # json: the rows under their own key, never among the trained rows or the baseline.
    assert {g["group"] for g in report["rows"]} == set(by_run.values())
    assert report["baseline"] in by_run.values()
    paper = {p["name"]: p for p in report["paper_only"]}
    assert set(paper) == {"OLTR", "LFME"} and all(p["mark"] == MARK for p in paper.values())
    assert paper["OLTR"]["reference"] == OLTR and paper["OLTR"]["data"] == "a"

    # csv and latex carry them too, marked.
    table = list(csv.DictReader(io.StringIO(lwr("report", out, "--format", "csv").out)))
    assert [t["kind"] for t in table] == ["trained", MARK, "trained", MARK]
    assert table[1]["paper_top1"] == "41.2" and table[1]["n"] == "" and table[1]["top1_mean"] == ""
    assert table[1]["source"].startswith("Liu et al. CVPR 2019")
    assert f"OLTR ({MARK})" in lwr("report", out, "--format", "latex").out

    # A paper-only row is never a baseline.
    r = lwr("report", out, "--baseline", "OLTR")
    assert r.code == 2 and "paper-only row" in r.err and "Traceback" not in r.err

    # Reporting one run folder shows the paper rows of its dataset only.
    md = lwr("report", out / "bs-b" / "seed=0").out
    assert "LFME" in md and "OLTR" not in md


def test_corrected_paper_number_updates_the_record_without_refusing(
    lwr, tmp_path: Path, two_datasets: tuple[Path, Path]
) -> None:
    a, b = two_datasets
    out = tmp_path / "sweep"
    data = ["--data", f"a={a}", "--data", f"b={b}"]
    assert lwr("sweep", "--file", _sweep_file(tmp_path / "s.yaml"), *data, "--out", out).code == 0
    ckpt = out / "bs-a" / "seed=0" / "checkpoints" / "last.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    r = lwr("sweep", "--file", _sweep_file(tmp_path / "s.yaml", 41.9), *data, "--out", out)
    assert r.code == 0 and "2 finished already" in r.err, r.err
    assert ckpt.stat().st_mtime_ns == stamp
    record = json.loads((out / "sweep.json").read_text())
    assert next(x for x in record["paper_only"] if x["name"] == "OLTR")["reference"]["all"] == 41.9
    assert "| 41.9 |" in lwr("report", out).out


def test_bad_paper_rows_are_user_errors(tmp_path: Path) -> None:
    def load(rows: list[dict]) -> SweepSpec:
        path = tmp_path / "s.yaml"
        path.write_text(
            yaml.safe_dump({"entries": [{"preset": "synthetic-lt-bs"}], "paper_only": rows})
        )
        return load_sweep_file(str(path))

    ok = {"name": "OLTR", "reference": {"all": 41.2}, "source": "Liu et al."}
    assert load([ok]).paper_only[0].reference == {"all": 41.2}
    for bad, words in (
        ({**ok, "reference": {"top1": 41.2}}, "all, many, medium, few"),
        ({**ok, "reference": {"all": 141.2}}, "[0, 100]"),
        ({**ok, "reference": {}}, "at least one"),
        ({k: v for k, v in ok.items() if k != "source"}, "paper_only.0.source"),
        ({**ok, "sauce": "x"}, "sauce"),
    ):
        with pytest.raises(UserError, match="Invalid sweep file") as exc:
            load([bad])
        assert words in str(exc.value), str(exc.value)

    row = PaperRow(**ok)
    check_rows([row], [""])  # one dataset: no key needed
    with pytest.raises(UserError, match="needs `data: KEY`"):
        check_rows([row], ["ir100", "ir50"])
    with pytest.raises(UserError, match="no entry of the sweep uses; entries use: ir100"):
        check_rows([PaperRow(**ok, data="ir25")], ["ir100"])
    with pytest.raises(UserError, match="listed twice"):
        check_rows([row, row], ["ir100"])


def test_record_without_paper_rows_is_unchanged() -> None:
    """Sweeps recorded before paper-only rows existed still match the same command."""
    record = sweep_record(SweepSpec(entries=[Entry(preset="synthetic-lt-bs")]), [])
    assert set(record) == {"command", "runs"} and "paper_only" not in record["command"]


def test_shipped_sweeps_carry_the_checked_paper_only_rows() -> None:
    """The relatives sweep holds every method of issue 19, stage 2 after its own stage 1;
    ImageNet-LT lists OLTR and LFME (ResNet-10) with the numbers quoted from their papers, each
    with a source that names the backbone."""
    spec = load_sweep_file("cifar100-lt-ir100-relatives")
    names = [e.name for e in spec.entries]
    for method in ("bs", "bs+lwr", "wb", "wb+lwr", "etf", "mislas", "ib", "seql", "bbn"):
        assert method in names
    assert {e.name: e.init_from for e in spec.entries if e.init_from} == {
        "wb": "wb-stage1",
        "wb+lwr": "wb-stage1",
        "mislas": "mislas-stage1",
    }
    mixed = next(e for e in spec.entries if e.name == "bs+lwr+mixup+ra")
    assert mixed.preset == "cifar100-lt-ir100-bs-randaugment-lwr"
    assert "mixing.mixup_alpha=1.0" in mixed.set
    assert spec.seeds == [0, 1, 2]
    table = {r.name: r for r in load_sweep_file("imagenet-lt-table").paper_only}
    assert table["OLTR"].reference == {"all": 35.6, "many": 43.2, "medium": 35.1, "few": 18.5}
    assert table["LFME"].reference == {"all": 37.2, "many": 47.1, "medium": 35.0, "few": 17.5}
    assert table["OLTR (re-implemented, ResNeXt-50)"].reference["all"] == 41.9
    assert all("Table" in r.source and "ResNe" in r.source for r in table.values())
