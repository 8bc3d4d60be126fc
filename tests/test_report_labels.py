"""Issue 24: `lwr report` labels name only settings that act on training, and stay short."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import make_run

from lwrcli.studies.report import NOT_SETTINGS, build_report

SCORE = {"top1": 50.0, "top5": 90.0, "many": 60.0, "medium": 50.0, "few": 40.0}

# One value for each inert key, other than the preset's own.
INERT = {
    "data.num_workers": "0",
    "data.gpu_decode": "true",
    "log_every": "3",
    "save_every": "2",
    "checkpoint_every_steps": "7",
    "checkpoint_every_minutes": "5",
    "eval_batch_size": "32",
    "device": "cpu",
    "dist_timeout_minutes": "5",
    "channels_last": "false",
    "compile": "false",
    "compile_mode": "default",
    "log.to": "tensorboard",
    "description": "another",
}


def test_the_inert_keys_are_an_explicit_list() -> None:
    for key in INERT:
        assert key in NOT_SETTINGS or key.split(".")[0] in NOT_SETTINGS, key
    for key in ("epochs", "batch_size", "amp", "optim.lr", "data.sampler", "loss.name"):
        assert key not in NOT_SETTINGS  # these change what a run trains


@pytest.mark.parametrize("key", sorted(INERT))
def test_runs_differing_only_in_an_inert_key_are_one_group(tmp_path: Path, key: str) -> None:
    make_run(tmp_path, "a/seed=0", "synthetic-lt-bs", 0, SCORE)
    make_run(tmp_path, "b/seed=1", "synthetic-lt-bs", 1, SCORE, sets=(f"{key}={INERT[key]}",))
    groups = build_report([tmp_path])["groups"]
    assert len(groups) == 1 and groups[0].stats["top1"]["n"] == 2


def test_labels_name_only_the_acting_difference(tmp_path: Path) -> None:
    inert = ("data.num_workers=0", "log_every=3", "checkpoint_every_minutes=5")
    make_run(tmp_path, "a/seed=0", "synthetic-lt-bs-lwr", 0, SCORE, sets=("lwr.theta=0.2",))
    make_run(tmp_path, "b/seed=0", "synthetic-lt-bs-lwr", 0, SCORE, sets=("lwr.theta=0.6", *inert))
    labels = sorted(g.label for g in build_report([tmp_path])["groups"])
    assert labels == ["θ=0.2", "θ=0.6"], labels


def test_runs_of_two_recipes_are_labelled_by_their_names(tmp_path: Path) -> None:
    # Two presets whose full configs differ in many keys (loss, its settings, re-weighting,
    # the head): the labels are the recipes' names, without the dataset they share.
    make_run(tmp_path, "bs/seed=0", "cifar100-lt-ir100-bs", 0, SCORE)
    make_run(tmp_path, "ldam/seed=0", "cifar100-lt-ir100-ldam-drw", 0, SCORE)
    sets = ("optim.lr=0.05", "data.num_workers=1")  # one acting difference inside a recipe
    make_run(tmp_path, "ldam-lr/seed=0", "cifar100-lt-ir100-ldam-drw", 0, SCORE, sets=sets)
    labels = sorted(g.label for g in build_report([tmp_path])["groups"])
    assert labels == ["bs", "ldam-drw, lr=0.05", "ldam-drw, lr=0.1"], labels


def test_runs_of_two_datasets_stay_short(tmp_path: Path) -> None:
    # imagenet-lt-bs and a CIFAR recipe differ in ~25 keys, inert ones among them.
    make_run(tmp_path, "in/seed=0", "imagenet-lt-bs", 0, SCORE, fingerprint="fp-a")
    make_run(tmp_path, "c/seed=0", "cifar100-lt-ir100-ldam-drw", 0, SCORE, fingerprint="fp-b")
    labels = [g.label for g in build_report([tmp_path])["groups"]]
    assert sorted(labels) == ["cifar100-lt-ir100-ldam-drw", "imagenet-lt-bs"], labels
    assert all(len(label) < 60 for label in labels)
