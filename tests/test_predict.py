"""`lwr predict`: new images through a trained checkpoint, checked against `lwr eval`'s own
pipeline on the same images, the closed form of logit adjustment, and bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args
from jpegtree import write_image_folder, write_jpeg
from PIL import Image

from lwrcli.checkpoint.files import load_checkpoint, save_checkpoint
from lwrcli.config import load_config
from lwrcli.data.arrays import load_arrays
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import read_manifest
from lwrcli.models import build_model, classifier_key
from lwrcli.runtime.distributed import DistInfo
from lwrcli.train.scoring import predict
from lwrcli.use.evaluate import load_model
from lwrcli.use.predict_inputs import collect_images

SETS = (
    "epochs=1", "batch_size=4", "eval_batch_size=8", "model.name=small_cnn", "model.width=4",
    "data.image_size=16", "data.resize=18", "data.num_workers=0", "amp=none", "device=cpu",
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder dataset of JPEGs (stored as lists) and a small CNN trained one epoch on it."""
    from lwrcli.cli.main import main

    base = tmp_path_factory.mktemp("predict")
    write_image_folder(base / "raw", [12, 7, 5])
    data, run = base / "data", base / "run"
    few = ["--test-per-class", "3", "--min-per-class", "2"]  # 9/4/2 train images are enough
    for args in (
        ["prepare-data", "folder", "--root", base / "raw", "--out", data, *few],
        train_args("folder-bs-lwr", data, run, *SETS),
    ):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
            raise SystemExit(0)
        assert exc.value.code in (0, None)
    return {"raw": base / "raw", "data": data, "ckpt": run / "checkpoints" / "last.safetensors"}


def _eval_probs(ckpt_path: Path, data: Path) -> torch.Tensor:
    """Probabilities (N, C) of the test split through `lwr eval`'s loader and model."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt.config.model_copy(deep=True)
    bundle = build_data(data, cfg, torch.device("cpu"), train=False, splits=["test"])
    model = load_model(ckpt, torch.device("cpu"))
    logits, _ = predict(model, bundle.evals["test"], torch.device("cpu"), "none", DistInfo())
    return torch.softmax(logits, 1)


def _rows(path: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_predictions_equal_eval_and_bad_files_are_named(lwr, trained, tmp_path: Path) -> None:
    data, raw = trained["data"], trained["raw"]
    test = [line.rsplit(maxsplit=1)[0] for line in (data / "test.txt").read_text().splitlines()]
    listing = raw / "test-images.lst"  # paths relative to the list's own folder
    listing.write_text("# the prepared test split\n" + "\n".join(test) + "\n")
    extra = tmp_path / "new"
    extra.mkdir()
    (extra / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    gray = np.random.default_rng(1).integers(0, 256, (30, 22), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(extra / "gray.PNG")
    out = tmp_path / "preds.jsonl"
    r = lwr("predict", trained["ckpt"], listing, extra, "--out", out, "--top-k", "10",
            "--workers", "2", "--batch-size", "5")  # fmt: skip
    assert r.code == 0, r.err
    assert f"skipped {extra / 'broken.jpg'}" in r.err
    rows = _rows(out)
    assert len(rows) == len(test) + 1 and str(extra / "broken.jpg") not in rows
    summary = json.loads((tmp_path / "preds.jsonl.summary.json").read_text())
    assert summary["images"] == len(test) + 1 and summary["top_k"] == 3  # capped at C = 3
    assert [s["path"] for s in summary["skipped"]] == [str(extra / "broken.jpg")]
    assert summary["preprocessing_from"] == "checkpoint metadata"
    assert "shorter side 18 -> centre crop 16" in summary["preprocessing"]

    want = _eval_probs(trained["ckpt"], data)
    names = read_manifest(data).class_names
    for i, rel in enumerate(test):
        row = rows[str(raw / rel)]
        assert row["ids"][0] == int(want[i].argmax())
        assert row["names"] == [names[c] for c in row["ids"]]
        got = torch.zeros(3, dtype=torch.float64)
        got[row["ids"]] = torch.tensor(row["probs"], dtype=torch.float64)
        assert torch.allclose(got, want[i].double(), atol=1e-5)
    # The grayscale PNG, by hand: RGB copies of the gray channel, Resize 18, CentreCrop 16.
    from torchvision.transforms import v2

    x = torch.from_numpy(np.repeat(gray[None], 3, 0))
    x = v2.CenterCrop(16)(v2.Resize(18, antialias=True)(x)).float() / 255
    cfg = load_checkpoint(trained["ckpt"]).config.data
    x = (x - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)
    model = load_model(load_checkpoint(trained["ckpt"]), torch.device("cpu"))
    with torch.no_grad():
        p = torch.softmax(model(x[None]), 1)[0]
    row = rows[str(extra / "gray.PNG")]
    assert torch.allclose(torch.tensor(row["probs"]), p[row["ids"]], atol=1e-5)


def test_logit_adjustment_is_the_closed_form(lwr, trained, tmp_path: Path) -> None:
    """softmax(z - τ log π), π the checkpoint's train counts, from the unadjusted output."""
    folder = trained["raw"] / "class_02"
    plain, adjusted = tmp_path / "plain.csv", tmp_path / "la.csv"
    assert lwr("predict", trained["ckpt"], folder, "--out", plain, "--workers", "0").code == 0
    r = lwr("predict", trained["ckpt"], folder, "--out", adjusted, "--posthoc-tau", "0.7",
            "--workers", "0")  # fmt: skip
    assert r.code == 0, r.err

    def probs(path: Path) -> dict[str, torch.Tensor]:
        out = {}
        for row in csv.DictReader(path.open()):
            p = torch.zeros(3, dtype=torch.float64)
            for k in (1, 2, 3):
                p[int(row[f"top{k}_id"])] = float(row[f"top{k}_prob"])
            out[row["path"]] = p
        return out

    before, after = probs(plain), probs(adjusted)
    assert before.keys() == after.keys() and len(before) == 5
    counts = torch.tensor(read_manifest(trained["data"]).class_counts, dtype=torch.float64)
    log_prior = (counts / counts.sum()).log()
    for path, p in before.items():
        want = torch.softmax(p.log() - 0.7 * log_prior, 0)
        assert torch.allclose(after[path], want, atol=1e-5)
    assert not torch.allclose(torch.stack(list(before.values())), torch.stack(list(after.values())))


def test_array_trained_model_sees_images_as_stored(
    lwr, synthetic_data: Path, tmp_path: Path
) -> None:
    """A small-image run, its dataset found through run.json: PNGs of stored test images give
    eval's probabilities for those images."""
    cfg = load_config("synthetic-lt-bs-lwr", overrides=["model.width=4", "device=cpu"])
    manifest = read_manifest(synthetic_data)
    torch.manual_seed(0)
    model = build_model(cfg.model, manifest.num_classes)
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.safetensors"
    save_checkpoint(ckpt, model, cfg, manifest.class_counts, manifest.class_names, 1, {},
                    classifier_key(model))  # fmt: skip
    (run / "run.json").write_text(json.dumps({"data_dir": str(synthetic_data)}))
    images, _ = load_arrays(synthetic_data, "test")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(12):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(pngs / f"{i:02d}.png")
    out = tmp_path / "p.jsonl"
    r = lwr("predict", ckpt, pngs, "--out", out, "--top-k", "1", "--workers", "0")
    assert r.code == 0, r.err
    want = _eval_probs(ckpt, synthetic_data)[:12]
    rows = _rows(out)
    for i in range(12):
        row = rows[str(pngs / f"{i:02d}.png")]
        assert row["ids"] == [int(want[i].argmax())]
        assert row["probs"][0] == pytest.approx(float(want[i].max()), abs=1e-5)
    summary = json.loads((tmp_path / "p.jsonl.summary.json").read_text())
    assert summary["preprocessing"].startswith(f"arrays: centre square -> {images.shape[-1]}x")
    assert summary["preprocessing_from"].startswith("the run's dataset")
    r = lwr("predict", ckpt, pngs, "--out", tmp_path / "t.csv", "--tte")
    assert r.code == 2 and "Predict without --tte" in r.err


def test_inputs_folders_and_list_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for rel in ("a/1.jpg", "a/b/2.JPEG", "c.webp", "d.Png", "e.bmp", ".hidden/x.jpg", "a/.y.jpg"):
        write_jpeg(tmp_path / "tree" / rel, rng, (8, 8))
    (tmp_path / "tree" / "notes.txt").write_text("not an image")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("\n# comment\n../tree/c.webp\n  ../gone.jpg  \n")
    got = collect_images([tmp_path / "tree", tmp_path / "lists" / "l.txt"])
    tree = tmp_path / "tree"
    assert got[:5] == sorted(
        [tree / "a/1.jpg", tree / "a/b/2.JPEG", tree / "c.webp", tree / "d.Png", tree / "e.bmp"]
    )
    # List entries are relative to the list's folder; a missing one is kept, to be reported.
    assert got[5:] == [tmp_path / "lists" / "../tree/c.webp", tmp_path / "lists" / "../gone.jpg"]
    assert collect_images([tree / "c.webp", tree / "c.webp"]) == [tree / "c.webp"]


def test_bad_inputs_exit_2_and_leave_nothing(lwr, trained, tmp_path: Path) -> None:
    ckpt, folder = trained["ckpt"], trained["raw"] / "class_02"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"garbage")
    (bad / "b.png").write_bytes(b"")
    out = tmp_path / "sub" / "deeper" / "p.csv"
    cases = [
        (("predict", tmp_path / "nope.safetensors", folder, "--out", out), "does not exist"),
        (("predict", ckpt, empty, "--out", out), "No images found"),
        (("predict", ckpt, tmp_path / "missing", "--out", out), "does not exist"),
        (("predict", ckpt, folder, "--out", tmp_path / "p.xlsx"), "unknown output format"),
        (("predict", ckpt, folder, "--out", out, "--posthoc", "magic"), "--posthoc must be"),
        (("predict", ckpt, bad, "--out", out, "--workers", "0"), "None of the 2 images"),
    ]
    for args, message in cases:
        r = lwr(*args)
        assert r.code == 2 and message in r.err, (args, r.err)
        assert "Traceback" not in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty"]  # no sub/, no temp
    existing = tmp_path / "p.jsonl"
    existing.write_text("mine\n")
    r = lwr("predict", ckpt, folder, "--out", existing)
    assert r.code == 2 and "--overwrite" in r.err
    assert existing.read_text() == "mine\n"
    r = lwr("predict", ckpt, folder, "--out", existing, "--overwrite", "--workers", "0")
    assert r.code == 0, r.err
    assert len(existing.read_text().splitlines()) == 5
    assert not list(tmp_path.glob(".*.tmp"))
