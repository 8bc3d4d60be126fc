"""Class names from names files, the manifest's record of their origin, and prompt text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jpegtree import write_list_dataset

from lwrcli.data.classnames import prompt_name, read_names_file
from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.errors import UserError


def test_names_file_formats(tmp_path: Path) -> None:
    plain = tmp_path / "names.txt"
    plain.write_text("aquarium_fish\n\nmaple tree\n")
    assert read_names_file(plain).names == ["aquarium_fish", "maple tree"]
    # categories_places365.txt: `/letter/name[/sub] id`, ids out of order here on purpose.
    places = tmp_path / "categories_places365.txt"
    places.write_text("/a/apartment_building/outdoor 1\n/a/airfield 0\n/b/bakery/shop 2\n")
    assert read_names_file(places).names == [
        "airfield",
        "apartment_building/outdoor",
        "bakery/shop",
    ]
    # iNaturalist 2018 categories.json: a list of objects with id, name and more.
    cats = [{"id": 1, "name": "Aporrectodea caliginosa", "kingdom": "Animalia"},
            {"id": 0, "name": "Plantae 7291", "kingdom": "Plantae"}]  # fmt: skip
    inat = tmp_path / "categories.json"
    inat.write_text(json.dumps(cats))
    assert read_names_file(inat).names == ["Plantae 7291", "Aporrectodea caliginosa"]
    gap = tmp_path / "gap.txt"
    gap.write_text("a 0\nb 2\n")
    with pytest.raises(UserError, match="ids must be 0..1"):
        read_names_file(gap)
    assert prompt_name("apartment_building/outdoor") == "apartment building outdoor"


def test_old_manifest_without_source_loads(synthetic_data: Path) -> None:
    data = json.loads((synthetic_data / "manifest.json").read_text())
    assert data.pop("class_names_source").startswith("synthetic")
    data.pop("class_counts_known")
    assert Manifest.model_validate(data).class_names_source is None


def _lists(tmp_path: Path) -> dict[str, Path]:
    return write_list_dataset(tmp_path / "raw", classes=3, per_class=(3, 1, 1))


def test_cli_class_names_file_and_wrong_count(lwr, tmp_path: Path) -> None:
    lists = _lists(tmp_path)
    names = tmp_path / "categories.txt"
    names.write_text("/a/airfield 0\n/b/bakery/shop 1\n/c/coast 2\n")
    common = ["prepare-data", "places-lt", "--root", tmp_path / "raw" / "images",
              "--train-list", lists["train"], "--val-list", lists["val"],
              "--test-list", lists["test"]]  # fmt: skip
    out = tmp_path / "d"
    r = lwr(*common, "--out", out)
    assert r.code == 0, r.err
    m = read_manifest(out)
    assert m.class_names == ["c00", "c01", "c02"]
    assert m.class_names_source == "image folder names (train list)"
    r = lwr(*common, "--out", tmp_path / "named", "--class-names", names)
    assert r.code == 0, r.err
    m = read_manifest(tmp_path / "named")
    assert m.class_names == ["airfield", "bakery/shop", "coast"]
    assert m.class_names_source == f"--class-names {names}"
    names.write_text("/a/airfield 0\n/c/coast 1\n")
    r = lwr(*common, "--out", tmp_path / "bad", "--class-names", names)
    assert r.code == 2 and "has 2 names but the dataset has 3 classes" in r.err
    assert not (tmp_path / "bad").exists()


def test_cli_folder_and_cifar_names_sources(lwr, tmp_path: Path) -> None:
    from jpegtree import write_image_folder

    write_image_folder(tmp_path / "tree", [4, 3, 2])
    r = lwr("prepare-data", "folder", "--root", tmp_path / "tree", "--out", tmp_path / "f",
            "--test-per-class", "1", "--min-per-class", "1")  # fmt: skip
    assert r.code == 0, r.err
    m = read_manifest(tmp_path / "f")
    assert m.class_names_source == "folder names" and m.class_names[0] == "class_00"
    r = lwr("prepare-data", "synthetic", "--out", tmp_path / "s", "--seed", "1",
            "--eval-only")  # fmt: skip
    assert r.code == 2 and "--eval-only does not apply to source 'synthetic'" in r.err


def test_cli_imagenet_lt_eval_only_needs_the_test_list_alone(lwr, tmp_path: Path) -> None:
    test = tmp_path / "my_test.txt"
    test.write_text("".join(f"val/n{c:08d}/x{c}.JPEG {c}\n" for c in range(1000)))
    out = tmp_path / "zs"
    r = lwr("prepare-data", "imagenet-lt", "--root", tmp_path, "--out", out, "--no-verify",
            "--eval-only", "--test-list", test)  # fmt: skip
    assert r.code == 0, r.err
    m = read_manifest(out)
    assert m.splits == {"test": 1000} and not m.class_counts_known
    assert m.class_names[0] == "tench"
    sizes = {g: len(v) for g, v in m.shot_groups.items()}
    assert sizes == {"many": 385, "medium": 479, "few": 136}  # ImageNet-LT's published groups
