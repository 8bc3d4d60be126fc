"""Old runs keep working: a run folder written by lwr before issue 23 (tests/golden/old_run:
3 planned epochs of synthetic-lt-bs-lwr, stopped after epoch 2, config.yaml in the old key
format) resumes, evaluates, analyzes, predicts, exports and reports with today's code.
Old keys reach their new places through one table (lwrcli.config.migrate), tested here too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lwrcli.config import load_config, migrate, validate_config
from lwrcli.config.migrate import RENAMES, SWITCHES, migrate_override
from lwrcli.errors import UserError

OLD_RUN = Path(__file__).resolve().parent / "golden" / "old_run"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, run)
    return run


def test_the_fixture_is_in_the_old_format() -> None:
    raw = yaml.safe_load((OLD_RUN / "config.yaml").read_text())
    assert "cosine_classifier" in raw["model"] and "mixup_alpha" in raw["data"]
    assert "la_tau" in raw["loss"] and "max_norm" in raw["optim"]


# A value other than the default for every old key of the migration table.
OLD_VALUES = {
    "loss.focal_gamma": 2.5,
    "loss.ldam_max_m": 0.3,
    "loss.ldam_s": 20.0,
    "loss.la_tau": 1.5,
    "loss.ib_start_epoch": 7,
    "loss.ib_alpha": 500.0,
    "loss.ib_epsilon": 0.01,
    "loss.ib_class_weight": "none",
    "loss.seql_gamma": 0.5,
    "loss.seql_lambda": 0.01,
    "loss.label_smoothing": 0.2,
    "loss.label_smoothing_tail": 0.05,
    "loss.label_smoothing_shape": "linear",
    "loss.label_smoothing_power": 2.0,
    "optim.max_norm": 0.3,
    "optim.max_norm_mode": "relative",
    "data.mixup_alpha": 0.4,
    "data.cutmix_alpha": 1.0,
    "data.mix_prob": 0.5,
    "data.mix_switch_prob": 0.3,
    "model.cosine_scale": 25.0,
    "model.etf_feature_bn": False,
}


def _at(data: dict, dotted: str) -> object:
    for part in dotted.split("."):
        data = data[part]
    return data


def test_every_old_key_reaches_its_new_place() -> None:
    """Each entry of the migration table, on a config that sets the old key to a non-default
    value: the value is at the new key and the result validates; a key of a loss the run does
    not use is dropped, as the run never used it."""
    assert set(OLD_VALUES) == {old for old, _, _ in RENAMES}
    for old, new, when in RENAMES:
        section, key = old.split(".")
        data: dict = {section: {key: OLD_VALUES[old]}}
        if when is None:
            pass
        elif when.startswith("head:"):
            data["model"][f"{when[5:]}_classifier"] = True
        else:
            data.setdefault("loss", {})["name"] = when
        if data.get("loss", {}).get("name") == "ib":
            data["epochs"] = 200  # IB's switch epoch (default 100) must fall inside the run
        if data.get("loss", {}).get("name") == "ldam":
            data.setdefault("model", {})["cosine_classifier"] = True  # LDAM's cosine logits
        migrated = migrate(data)
        assert _at(migrated, new) == OLD_VALUES[old], (old, new)
        validate_config(data)
        if when is not None and not when.startswith("head:"):
            other = migrate({"loss": {"name": "bs", key: OLD_VALUES[old]}})
            assert other["loss"] == {"name": "bs"}, old
    for old, (new, if_true, if_false) in SWITCHES.items():
        section, key = old.split(".")
        for flag, name in ((True, if_true), (False, if_false)):
            assert _at(migrate({section: {key: flag}}), new) == name, (old, flag)
    with pytest.raises(UserError, match="two different heads"):  # refused then, refused now
        migrate({"model": {"cosine_classifier": True, "etf_classifier": True}})
    # --set keys too, with a note for the user
    path, value, note = migrate_override(["model", "cosine_classifier"], True)
    assert path == ["model", "head", "name"] and value == "cosine" and "model.head.name" in note
    assert migrate_override(["loss", "la_tau"], 2.0)[:2] == (["loss", "tau"], 2.0)
    assert migrate_override(["lwr", "theta"], 0.3) == (["lwr", "theta"], 0.3, None)
    # One loss's old key on a sweep's command line: its runs of other losses leave it out.
    notes: list[str] = []
    bs = load_config("synthetic-lt-bs", overrides=["loss.ib_start_epoch=2"], log=notes.append)
    assert bs.loss.name == "bs" and "left out" in notes[0]
    ib = load_config("cifar100-lt-ir100-ib", overrides=["loss.ib_start_epoch=2"], log=print)
    assert ib.loss.start_epoch == 2


def test_migrating_is_idempotent_and_keeps_every_value() -> None:
    raw = yaml.safe_load((OLD_RUN / "config.yaml").read_text())
    new = migrate(raw)
    assert migrate(new) == new
    cfg = validate_config(raw)
    assert cfg.loss.name == "bs" and cfg.model.head.name == "linear"
    assert cfg.lwr.theta == raw["lwr"]["theta"] and cfg.section("mixing").prob == 1.0
    # Old keys on the command line still work (with a note) and mean the same.
    a = load_config("synthetic-lt-bs", overrides=["model.cosine_classifier=true"], log=print)
    b = load_config("synthetic-lt-bs", overrides=["model.head.name=cosine"], log=print)
    assert a == b


@pytest.mark.slow
def test_an_old_run_evaluates_analyzes_predicts_and_exports(
    lwr, old_run: Path, small: Path, tmp_path: Path
) -> None:
    ckpt = old_run / "checkpoints" / "last.safetensors"
    ev = lwr("eval", ckpt, "--data", small, "--out", tmp_path / "ev")
    assert ev.code == 0, ev.err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    records = [json.loads(x) for x in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["epoch"] == 2
    assert summary["top1"] == records[-1]["test_top1"]  # what the old run measured then

    an = lwr("analyze-weights", ckpt, "--data", small, "--out", tmp_path / "an")
    assert an.code == 0, an.err
    assert (tmp_path / "an" / "summary.json").is_file()

    from PIL import Image

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (60 * i, 80, 120)).save(pngs / f"{i}.png")
    pred = lwr("predict", ckpt, pngs, "--out", tmp_path / "p.csv", "--workers", "0")
    assert pred.code == 0, pred.err
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 4

    ex = lwr("export", ckpt, "--format", "torchscript", "--out", tmp_path / "ex")
    assert ex.code == 0, ex.err
    assert (tmp_path / "ex" / "model.pt").is_file()


@pytest.mark.slow
def test_an_old_run_resumes_to_the_weights_of_an_uninterrupted_new_run_and_reports(
    lwr, old_run: Path, small: Path, tmp_path: Path
) -> None:
    """Epochs 1-2 by the old code, epoch 3 by today's == all three by today's, bit for bit
    (one thread, fp32, as recorded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = lwr("train", "--resume", old_run, "--data", small)
        assert res.code == 0, res.err
        config = tmp_path / "old.yaml"
        shutil.copy(old_run / "config.yaml", config)
        fresh = lwr("train", "--config", config, "--data", small, "--out", tmp_path / "fresh")
        assert fresh.code == 0, fresh.err
    finally:
        torch.set_num_threads(threads)
    a = load_file(str(old_run / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "fresh" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (old_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3]
    rep = lwr("report", old_run, tmp_path / "fresh", "--format", "json")  # now finished
    assert rep.code == 0, rep.err
    rows = json.loads(rep.out)["rows"]
    assert len(rows) == 1 and rows[0]["n"] == 1  # same config and seed: one group, one seed
