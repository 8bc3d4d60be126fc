"""One validated config per run: `TrainConfig` over the sections of `lwrcli.config.sections`,
preset loading and `--set key=value` overrides.

Every model forbids unknown keys, so a typo fails loudly and names the closest valid key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from lwrcli.config.rules import check_fixed_head
from lwrcli.config.sections import (
    DataConfig,
    EMAConfig,
    InitConfig,
    LogConfig,
    LossConfig,
    LWRConfig,
    LWRScheduleConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    Stage2Config,
    Strict,
)
from lwrcli.errors import UserError, did_you_mean

__all__ = [
    "Strict",
    "ModelConfig",
    "LossConfig",
    "LWRScheduleConfig",
    "LWRConfig",
    "OptimConfig",
    "ScheduleConfig",
    "DataConfig",
    "EMAConfig",
    "InitConfig",
    "Stage2Config",
    "LogConfig",
    "TrainConfig",
    "load_config",
    "validate_config",
]


class TrainConfig(Strict):
    name: str = "custom"
    description: str = ""
    # Which prepared-dataset kind this recipe is for (checked against the manifest's source).
    dataset: str = Field("any", description="e.g. cifar100, imagenet-lt, synthetic, any")
    epochs: int = Field(200, ge=1, le=10000)
    # Global batches: under torchrun each of the W processes takes batch_size / W.
    batch_size: int = Field(128, ge=1, le=65536)
    eval_batch_size: int = Field(512, ge=1, le=65536)
    # Gradient accumulation: each process splits its batch into accum_steps micro-batches, so
    # a global batch that does not fit on the devices is reached with the same lr and result.
    accum_steps: int = Field(1, ge=1, le=1024)
    # SyncBatchNorm across processes (GPUs only); the reference recipes use per-device BN.
    sync_bn: bool = False
    # A process that waits this long in a collective (a peer died) gives up with a message.
    dist_timeout_minutes: float = Field(30.0, gt=0.0, le=1440.0)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Speed settings; `auto` is resolved once at run start
    # (lwrcli.train.build.resolve_speed_settings) and the concrete values are what config.yaml
    # and checkpoints record:
    # amp auto -> bf16 on CUDA where supported, none (fp32) on CPU; channels_last auto -> on
    # for convolutional models; compile auto -> on for CUDA, off on CPU (there the compile time
    # outweighs the gain within the first epoch, see docs/training.md); compile_mode auto ->
    # reduce-overhead (CUDA graphs) on CUDA for device-resident small images, else default.
    amp: Literal["auto", "none", "bf16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    compile: Literal["auto"] | bool = "auto"
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune"] = "auto"
    eval_every: int = Field(1, ge=0, description="epochs; 0 = only at the end")
    # Test-time ensemble (LIFT) in the evaluation pass of training: five crops of the image
    # enlarged by 24 px, logits averaged (large-image datasets only).
    eval_tte: bool = False
    save_every: int = Field(0, ge=0, description="epochs; 0 = only last/best")
    # Resumable checkpoints inside an epoch (loader position + every RNG); 0 = off. Under
    # torchrun the minutes rule is checked at log intervals, where all processes agree.
    checkpoint_every_steps: int = Field(0, ge=0, description="optimizer steps; 0 = off")
    checkpoint_every_minutes: float = Field(0.0, ge=0.0, description="minutes; 0 = off")
    log_every: int = Field(50, ge=1, description="steps between plain log lines")
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    lwr: LWRConfig = LWRConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    data: DataConfig = DataConfig()
    ema: EMAConfig = EMAConfig()
    init: InitConfig = InitConfig()
    stage2: Stage2Config = Stage2Config()
    log: LogConfig = LogConfig()
    # The paper's numbers for this recipe (top-1 %), shown by `lwr presets`; informative only.
    reference: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ldam_needs_cosine_classifier(self) -> TrainConfig:
        # LDAM's margins and scale are defined on cosine logits in [-1, 1].
        if self.loss.name == "ldam" and not self.model.cosine_classifier:
            raise ValueError(
                "loss.name=ldam needs model.cosine_classifier=true (LDAM works on cosine logits)"
            )
        return self

    @model_validator(mode="after")
    def _ib_switch_inside_the_run(self) -> TrainConfig:
        if self.loss.name == "ib" and self.loss.ib_start_epoch >= self.epochs:
            raise ValueError(
                f"loss.ib_start_epoch={self.loss.ib_start_epoch} is not before the run's end "
                f"(epochs={self.epochs}): the influence-balanced phase would never start; "
                "lower loss.ib_start_epoch (0-based; the authors' CIFAR recipe: 100 of 200)"
            )
        return self

    @model_validator(mode="after")
    def _bbn_consistent(self) -> TrainConfig:
        if not self.model.bbn:
            return self
        m = self.model
        if m.name == "small_cnn" or m.name.startswith(("clip:", "timm:")):
            raise ValueError(
                f"model.bbn=true duplicates a ResNet's last residual block; {m.name} has none. "
                "Use resnet32 (CIFAR), resnet50, resnext50_32x4d, resnet152 or a "
                "torchvision:<ResNet> name"
            )
        if m.tuning != "full":
            raise ValueError("model.bbn=true trains the whole network: set model.tuning=full")
        if self.data.sampler != "instance":
            raise ValueError(
                f"model.bbn=true: BBN's conventional branch sees the instance sampler and its "
                f"re-balancing branch the reversed one; data.sampler={self.data.sampler} would "
                "replace the first. Set data.sampler=instance"
            )
        if self.loss.name not in ("ce", "bs", "la"):
            raise ValueError(
                f"model.bbn=true trains on the soft target a e_yc + (1 - a) e_yr, which "
                f"loss.name={self.loss.name} cannot take (it needs one class per sample). Use "
                "ce (BBN's loss), bs or la"
            )
        if self.data.mixing or self.loss.label_smoothing > 0:
            raise ValueError(
                "model.bbn=true already mixes each step's two batches into soft targets "
                "(a e_yc + (1 - a) e_yr); mixup/CutMix and label smoothing on top of them are "
                "not supported: set data.mixup_alpha=0, data.cutmix_alpha=0 and "
                "loss.label_smoothing=0"
            )
        if self.stage2.mode != "none" or self.stage2.cache_features:
            raise ValueError(
                "model.bbn=true is a one-stage method: stage2.mode and stage2.cache_features "
                "do not apply to it (train the stage-2 run without model.bbn)"
            )
        return self

    @model_validator(mode="after")
    def _fixed_head_consistent(self) -> TrainConfig:
        check_fixed_head(self)  # ETF head and dr loss vs LWR, stage 2, MaxNorm
        return self

    @model_validator(mode="after")
    def _stage2_consistent(self) -> TrainConfig:
        s2 = self.stage2
        if s2.mode == "crt" and not self.init.reset_classifier:
            raise ValueError(
                "stage2.mode=crt re-trains the classifier: set init.reset_classifier=true"
            )
        if s2.mode == "lws" and self.init.reset_classifier:
            raise ValueError(
                "stage2.mode=lws learns scales of the trained classifier: set "
                "init.reset_classifier=false"
            )
        if s2.cache_features and not s2.frozen_backbone:
            raise ValueError(
                "stage2.cache_features needs a frozen backbone (stage2.mode=crt or lws, or "
                "stage2.freeze=backbone): features of a training backbone change every step"
            )
        if s2.train_bn and not s2.frozen_backbone:
            raise ValueError(
                "stage2.train_bn updates the BatchNorm statistics of a frozen backbone: set "
                "stage2.freeze=backbone (or stage2.mode=crt/lws); a trained backbone's BN "
                "statistics update anyway"
            )
        if s2.cache_features and (s2.train_bn or self.data.mixing):
            raise ValueError(
                "stage2.cache_features computes each image's features once, which neither "
                "stage2.train_bn (statistics change every batch) nor mixup/CutMix (images mixed "
                "every batch) allows: set stage2.cache_features=false"
            )
        if s2.cache_features and self.ema.enabled:
            raise ValueError(
                "stage2.cache_features trains the head alone on cached features: ema.enabled "
                "is not supported there; set ema.enabled=false or stage2.cache_features=false"
            )
        if s2.cache_features and self.data.augment != "none":
            raise ValueError(
                f"stage2.cache_features computes each image's features once, so "
                f"data.augment={self.data.augment} cannot apply: set data.augment=none"
            )
        if s2.cache_features and (self.data.crop_padding > 0 or self.data.flip):
            raise ValueError(
                "stage2.cache_features computes each image's features once, so augmentation "
                "must be off: set data.crop_padding=0 and data.flip=false (or "
                "stage2.cache_features=false to augment with the backbone under no_grad)"
            )
        return self

    @model_validator(mode="after")
    def _soft_targets_supported(self) -> TrainConfig:
        if not (self.data.mixing or self.loss.smoothing):
            return self
        # Imported here, like the model names: losses builds on config.
        from lwrcli.methods.losses import soft_target_losses

        able = soft_target_losses()
        if self.loss.name not in able:
            what = "mixup/CutMix" if self.data.mixing else "label smoothing"
            raise ValueError(
                f"{what} trains on soft targets (class probabilities), which loss.name="
                f"{self.loss.name} cannot take (it needs one true class per sample): use "
                f"loss.name={' / '.join(able)}, or turn {what} off"
            )
        return self

    @property
    def effective_lr(self) -> float:
        """Learning rate after the batch-size scaling rule."""
        base = self.optim.base_batch_size or self.batch_size
        ratio = self.batch_size / base
        if self.optim.lr_scaling == "linear":
            return self.optim.lr * ratio
        if self.optim.lr_scaling == "sqrt":
            return self.optim.lr * ratio**0.5
        return self.optim.lr


# ---------------------------------------------------------------------------------------------
# Presets


def presets_dir() -> Path:
    """The shipped presets: inside the package when installed, beside it in a checkout."""
    env = os.environ.get("LWR_PRESETS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[1]  # the package folder
    for candidate in (here / "presets", here.parent / "presets"):
        if candidate.is_dir():
            return candidate
    raise UserError("The presets folder is missing from this installation; reinstall lwrcli.")


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        names = list_presets()
        raise UserError(
            f"Unknown preset '{name}'.{did_you_mean(name, names)} "
            f"Run 'lwr presets list' to see the {len(names)} shipped presets."
        )
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"Cannot read config file {path}: {exc.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"Config file {path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of keys to values.")
    return data


# ---------------------------------------------------------------------------------------------
# Overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML, so 0.1, true, [1, 2] all work)."""
    if "=" not in item:
        raise UserError(f"--set expects key=value (for example lwr.theta=0.4), got '{item}'.")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set has an empty key in '{item}'; use dotted keys like optim.lr=0.1.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set data[path] = value, checking every key against the config schema on the way."""
    model: type[BaseModel] | None = TrainConfig
    node = data
    for depth, key in enumerate(path):
        dotted = ".".join(path[: depth + 1])
        if model is not None:
            fields = model.model_fields
            if key not in fields:
                prefix = ".".join(path[:depth])
                valid = [f"{prefix}.{f}" if prefix else f for f in fields]
                raise UserError(
                    f"Unknown config key '{dotted}'.{did_you_mean(dotted, valid)} "
                    f"Valid keys here: {', '.join(valid)}."
                )
            annotation = fields[key].annotation
            model = (
                annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel)
                else None
            )
        last = depth == len(path) - 1
        if last:
            node[key] = value
        else:
            child = node.get(key)
            if not isinstance(child, dict):
                if model is None:
                    raise UserError(f"Config key '{dotted}' is not a section; cannot set below it.")
                child = {}
                node[key] = child
            node = child


# ---------------------------------------------------------------------------------------------
# Validation with readable errors


def _format_errors(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parent_model: type[BaseModel] = TrainConfig
            for p in err["loc"][:-1]:
                ann = parent_model.model_fields[str(p)].annotation
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    parent_model = ann
            prefix = ".".join(str(p) for p in err["loc"][:-1])
            valid = [f"{prefix}.{f}" if prefix else f for f in parent_model.model_fields]
            parts.append(f"unknown key '{loc}'.{did_you_mean(loc, valid)}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            parts.append(f"'{loc or 'config'}': {err['msg']}{shown}")
    return f"Invalid config from {source}: " + "; ".join(parts) + "."


def validate_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_errors(exc, source)) from None


def load_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] | None = None,
) -> TrainConfig:
    """Preset or YAML file, then `--set` overrides, validated once."""
    if (preset is None) == (config_file is None):
        raise UserError("Give exactly one of --preset NAME or --config FILE.")
    if preset is not None:
        path = preset_path(preset)
        source = f"preset '{preset}'"
    else:
        assert config_file is not None
        path = config_file
        source = str(config_file)
    data = read_yaml(path)
    for item in overrides or []:
        keys, value = parse_override(item)
        apply_override(data, keys, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return validate_config(data, source)


def config_to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
