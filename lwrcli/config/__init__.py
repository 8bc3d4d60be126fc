"""The run's config: pydantic sections, presets as short recipes, `--set` overrides and the
migrations that keep older run folders readable. Import the public names from here."""

from lwrcli.config.files import (
    list_presets,
    merge,
    preset_path,
    presets_dir,
    read_recipe,
    read_yaml,
)
from lwrcli.config.load import (
    apply_override,
    config_to_yaml,
    load_config,
    parse_override,
    validate_config,
)
from lwrcli.config.migrate import migrate
from lwrcli.config.schema import TrainConfig
from lwrcli.config.sections import (
    DataConfig,
    HeadSection,
    InitConfig,
    LogConfig,
    LossSection,
    LWRConfig,
    LWRScheduleConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    Section,
    SlotSection,
    Strict,
    VariantSection,
)
from lwrcli.config.slots import validate_slot

__all__ = [
    "DataConfig",
    "HeadSection",
    "InitConfig",
    "LWRConfig",
    "LWRScheduleConfig",
    "LogConfig",
    "LossSection",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "Section",
    "SlotSection",
    "Strict",
    "TrainConfig",
    "VariantSection",
    "apply_override",
    "config_to_yaml",
    "list_presets",
    "load_config",
    "loss_section",
    "merge",
    "migrate",
    "parse_override",
    "preset_path",
    "presets_dir",
    "read_recipe",
    "read_yaml",
    "validate_config",
    "validate_slot",
]


def loss_section(**values: object) -> LossSection:
    """A loss section by its values, e.g. loss_section(name="focal", gamma=2.0)."""
    return validate_slot("loss", dict(values))  # type: ignore[return-value]
