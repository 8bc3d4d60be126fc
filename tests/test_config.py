"""Config: strict validation, readable errors, overrides, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lwrcli.config import (
    TrainConfig,
    apply_override,
    list_presets,
    load_config,
    parse_override,
    validate_config,
)
from lwrcli.errors import UserError


def test_unknown_key_names_closest_valid_key() -> None:
    with pytest.raises(UserError) as err:
        validate_config({"lwr": {"thetta": 0.4}})
    assert "lwr.thetta" in str(err.value)
    assert "Did you mean 'lwr.theta'" in str(err.value)


def test_out_of_range_value_names_field_and_range() -> None:
    with pytest.raises(UserError) as err:
        validate_config({"lwr": {"theta": 1.5}})
    msg = str(err.value)
    assert "lwr.theta" in msg and "less than or equal to 1" in msg and "1.5" in msg


def test_set_parses_yaml_values_and_type_checks() -> None:
    assert parse_override("optim.lr=0.05") == (["optim", "lr"], 0.05)
    assert parse_override("lwr.proj=false") == (["lwr", "proj"], False)
    assert parse_override("schedule.milestones=[1, 2]") == (["schedule", "milestones"], [1, 2])
    cfg = load_config("synthetic-lt-bs-lwr", None, ["lwr.theta=0.6", "epochs=3"])
    assert cfg.lwr.theta == 0.6 and cfg.epochs == 3
    with pytest.raises(UserError, match="lwr.power"):
        load_config("synthetic-lt-bs-lwr", None, ["lwr.power=3"])
    with pytest.raises(UserError, match="epochs"):
        load_config("synthetic-lt-bs-lwr", None, ["epochs=many"])


def test_set_unknown_key_suggests() -> None:
    data: dict = {}
    with pytest.raises(UserError) as err:
        apply_override(data, ["optim", "learning_rate"], 0.1)
    assert "optim.learning_rate" in str(err.value)
    with pytest.raises(UserError, match="Did you mean 'lwr'"):
        apply_override(data, ["lwrr", "theta"], 0.1)
    with pytest.raises(UserError, match="key=value"):
        parse_override("optim.lr")


def test_unknown_preset_suggests() -> None:
    with pytest.raises(UserError) as err:
        load_config("cifar100-lt-ir100-bs-lwrr")
    assert "Did you mean 'cifar100-lt-ir100-bs-lwr'" in str(err.value)


def test_schedule_lists_must_match() -> None:
    with pytest.raises(UserError, match="same length"):
        validate_config({"schedule": {"milestones": [1, 2], "factors": [0.1]}})


def test_lr_scaling_rule() -> None:
    cfg = TrainConfig(batch_size=256, optim={"lr": 0.1, "base_batch_size": 128})
    assert cfg.effective_lr == pytest.approx(0.2)
    cfg = TrainConfig(
        batch_size=512, optim={"lr": 0.1, "base_batch_size": 128, "lr_scaling": "sqrt"}
    )
    assert cfg.effective_lr == pytest.approx(0.2)
    cfg = TrainConfig(
        batch_size=512, optim={"lr": 0.1, "base_batch_size": 128, "lr_scaling": "none"}
    )
    assert cfg.effective_lr == pytest.approx(0.1)


def test_config_file_and_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nlwr: {enabled: true}\n")
    assert load_config(None, path).epochs == 2
    evil = tmp_path / "evil.yaml"
    evil.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(None, evil)
    with pytest.raises(UserError, match="exactly one"):
        load_config("synthetic-lt-bs", path)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_validates_and_is_complete(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    raw = yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())
    # Complete: every field is written out, so the file alone documents the recipe.
    assert set(raw) == set(TrainConfig.model_fields)
    if name.endswith("-lwr"):
        # θ 0.4 (the paper's), or each pair's initial cosine for heads from text embeddings
        theta = "init" if cfg.model.head_init == "text" else 0.4
        assert cfg.lwr.enabled and cfg.lwr.theta == theta and cfg.lwr.proj
        assert cfg.lwr.schedule.kind == "linear"
    else:
        assert not cfg.lwr.enabled


def test_presets_match_their_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_presets", REPO / "tools" / "make_presets.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    presets = mod.all_presets()
    assert sorted(presets) == list_presets()
    for name, body in presets.items():
        assert (REPO / "presets" / f"{name}.yaml").read_text() == mod.render(name, body), name


def test_issue_preset_names_exist() -> None:
    names = set(list_presets())
    for ir in (100, 50, 10):
        for loss in ("ce", "ce-drw", "focal", "ldam-drw", "bs", "la"):
            assert f"cifar100-lt-ir{ir}-{loss}" in names
            assert f"cifar100-lt-ir{ir}-{loss}-lwr" in names
    for loss in ("ce-drw", "bs", "focal", "la", "ldam-drw"):
        assert {f"imagenet-lt-{loss}", f"imagenet-lt-{loss}-lwr"} <= names
    assert {"inat2018-bs", "inat2018-bs-lwr", "synthetic-lt-bs-lwr"} <= names
    assert {f"cifar10-lt-ir100-{x}" for x in ("ce", "bs-lwr", "ldam-drw-lwr")} <= names


def test_ldam_requires_a_cosine_classifier() -> None:
    with pytest.raises(UserError, match="cosine_classifier"):
        validate_config({"loss": {"name": "ldam"}})
    assert validate_config({"loss": {"name": "ldam"}, "model": {"cosine_classifier": True}})
