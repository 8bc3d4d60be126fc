"""Config: strict validation, readable errors, overrides, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lwrcli.config import (
    TrainConfig,
    apply_override,
    config_to_yaml,
    list_presets,
    load_config,
    parse_override,
    preset_path,
    read_recipe,
    validate_config,
)
from lwrcli.config.files import BASE_KEY
from lwrcli.config.slots import trick_sections
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


def test_set_takes_one_value_for_a_list_field(lwr) -> None:
    """Issue 24: `--set key=value` on any list-valued field wraps the one value in a list."""
    sets = ["model.freeze=layer1", "schedule.milestones=3", "schedule.factors=0.1"]
    cfg = load_config("synthetic-lt-bs", None, [*sets, "log.to=tensorboard", "epochs=5"])
    assert cfg.model.freeze == ["layer1"] and cfg.log.to == ["tensorboard"]
    assert cfg.schedule.milestones == [3] and cfg.schedule.factors == [0.1]
    # A list still is a list, null stays null, and a wrong value is still refused.
    cfg = load_config("synthetic-lt-bs", None, ["model.freeze=[layer1, layer2]"])
    assert cfg.model.freeze == ["layer1", "layer2"]
    with pytest.raises(UserError, match="log.to"):
        load_config("synthetic-lt-bs", None, ["log.to=tensorbored"])
    r = lwr("presets", "show", "synthetic-lt-bs", "--set", "model.freeze=layer1", "--diff")
    assert r.code == 0 and yaml.safe_load(r.out)["model"]["freeze"] == ["layer1"], r.err


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


# Every top-level section of a complete config: the core fields and each registered trick's
# section (ema, stage2, max_norm, mixing, label_smoothing), which are not pydantic fields.
ALL_SECTIONS = set(TrainConfig.model_fields) | set(trick_sections())


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_validates_and_is_complete(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    raw = yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())
    # A recipe: only keys of the config, on top of a shipped preset it names as _base_.
    base = raw.pop(BASE_KEY, None)
    assert set(raw) <= ALL_SECTIONS and raw["name"] == name
    if base is not None:
        assert base in list_presets() and base != name
    # Complete: the recipe with its _base_ chain gives the config with every field written
    # out (what `lwr presets show` prints and config.yaml records), and nothing else.
    assert validate_config(read_recipe(preset_path(name))) == cfg
    assert set(yaml.safe_load(config_to_yaml(cfg))) == ALL_SECTIONS
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
    texts = mod.rendered()
    assert sorted(texts) == list_presets()
    for name, text in texts.items():
        assert (REPO / "presets" / f"{name}.yaml").read_text() == text, name
    # Each recipe, merged along its _base_ chain, is the generator's complete config.
    for name, body in mod.all_presets().items():
        assert load_config(name) == TrainConfig.model_validate({**body, "name": name}), name


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
    with pytest.raises(UserError, match=r"loss.name=ldam needs model.head.name=cosine"):
        validate_config({"loss": {"name": "ldam"}})
    assert validate_config({"loss": {"name": "ldam"}, "model": {"head": {"name": "cosine"}}})


# --- issue 17: lambda_max auto, bf16 on a CPU that emulates it -------------------------------


def test_lambda_max_auto_follows_the_measured_rule() -> None:
    from lwrcli.train.lwr import lambda_for_classes
    from lwrcli.train.resolve import resolve_lambda_max

    # The rule's anchors (docs/lwr.md, "How strong is LWR?"): 10 at C = 100, 130 at C = 1000.
    assert [lambda_for_classes(c) for c in (10, 20, 100, 365, 1000)] == [
        1.8,
        3.0,
        10.0,
        42.0,
        130.0,
    ]
    cfg = load_config("folder-bs-lwr")
    assert cfg.lwr.lambda_max == "auto"
    assert resolve_lambda_max(cfg, 1000).cfg.lwr.lambda_max == 130.0
    explicit = load_config("folder-bs-lwr", overrides=["lwr.lambda_max=7"])
    assert resolve_lambda_max(explicit, 1000).cfg.lwr.lambda_max == 7.0


def test_every_preset_without_a_fixed_class_count_uses_auto() -> None:
    for name in list_presets():
        cfg = load_config(name)
        assert (cfg.lwr.lambda_max == "auto") == (cfg.dataset == "folder"), name


def test_lambda_auto_is_printed_and_saved_as_the_number(
    lwr, tmp_path: Path, synthetic_data: Path
) -> None:
    run = tmp_path / "run"
    sets = ["epochs=1", "model.width=8", "lwr.lambda_max=auto", "device=cpu"]
    r = lwr(
        "train",
        "--preset",
        "synthetic-lt-bs-lwr",
        "--data",
        synthetic_data,
        "--out",
        run,
        *[a for s in sets for a in ("--set", s)],
    )
    assert r.code == 0, r.err
    assert "lwr.lambda_max auto: 3 for 20 classes" in " ".join(r.err.split())
    assert yaml.safe_load((run / "config.yaml").read_text())["lwr"]["lambda_max"] == 3.0


def test_bf16_on_a_cpu_without_bf16_instructions_warns(
    lwr, tmp_path: Path, synthetic_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lwrcli.runtime.device as device

    base = ["train", "--preset", "synthetic-lt-bs", "--data", synthetic_data]
    sets = ["--set", "epochs=1", "--set", "model.width=8", "--set", "device=cpu"]
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    r = lwr(*base, "--out", tmp_path / "a", *sets, "--set", "amp=bf16")
    assert r.code == 0, r.err
    warnings = [ln for ln in r.err.splitlines() if ln.startswith("Warning: amp=bf16")]
    assert len(warnings) == 1 and "AVX512-BF16" in warnings[0] and "emulates" in warnings[0]
    r = lwr(*base, "--out", tmp_path / "b", *sets)  # amp auto: fp32 on CPU, no warning
    assert r.code == 0 and "amp=bf16" not in r.err
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    r = lwr(*base, "--out", tmp_path / "c", *sets, "--set", "amp=bf16")
    assert r.code == 0 and "Warning: amp=bf16" not in r.err
