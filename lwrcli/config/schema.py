"""`TrainConfig`: one validated config per run, the core sections of lwrcli.config.sections
plus the slots and trick sections the registered methods bring (lwrcli.config.slots).

Every model forbids unknown keys, so a typo fails loudly and names the closest valid key.
Each method's cross-field rules are its own (`Method.check`); the rules here concern only
the core.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from lwrcli.config.sections import (
    DataConfig,
    InitConfig,
    LogConfig,
    LossSection,
    LWRConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    Strict,
)
from lwrcli.config.slots import methods_of, slot_method, trick_sections, validate_slot


class TrainConfig(Strict):
    # Trick sections (ema:, ...) are not declared here: each registered trick adds its own,
    # validated by `_trick_sections` below; any other unknown key is refused there.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

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
    # Speed settings; `auto` is made concrete once, when the run is resolved
    # (lwrcli.train.resolve), and the concrete values are what config.yaml and checkpoints
    # record: amp auto -> bf16 on CUDA where supported and on CPUs with native bf16
    # (AVX512-BF16, AMX-BF16), none (fp32) on other CPUs; channels_last
    # auto -> on for convolutional models; compile auto -> on for CUDA, off on CPU (there the
    # compile time outweighs the gain within the first epoch, see docs/training.md);
    # compile_mode auto -> default.
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
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: SerializeAsAny[LossSection] = Field(default_factory=lambda: validate_slot("loss", {}))
    lwr: LWRConfig = Field(default_factory=LWRConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    # The paper's numbers for this recipe (top-1 %), shown by `lwr presets`; informative only.
    reference: dict[str, float] = Field(default_factory=dict)

    @field_validator("loss", mode="wrap")
    @classmethod
    def _loss(cls, value: Any, handler: Any) -> Any:
        return validate_slot("loss", value)

    @model_validator(mode="before")
    @classmethod
    def _trick_sections(cls, data: Any) -> Any:
        """Every registered trick's section, validated by its class (defaults when absent);
        a key that is neither a field nor a trick is refused, like any unknown key."""
        if not isinstance(data, dict):
            return data
        tricks = trick_sections()
        out = dict(data)
        errors: list[InitErrorDetails] = []
        for key, value in data.items():
            if key not in cls.model_fields and key not in tricks:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=value))
        for key, section in tricks.items():
            value = out.get(key, {})
            if isinstance(value, section):
                continue
            try:
                out[key] = section.model_validate(value)
            except ValidationError as exc:
                errors += [
                    InitErrorDetails(
                        type=e["type"], loc=(key, *e["loc"]), input=e["input"], ctx=e.get("ctx", {})
                    )
                    for e in exc.errors()
                ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out

    @model_validator(mode="after")
    def _methods_rules(self) -> TrainConfig:
        """Each method's cross-field rules: the chosen loss, head and variant, every trick."""
        for method in self.methods(selected_only=False):
            method.check(self)
        return self

    def section(self, key: str) -> Any:
        """A trick's section by its top-level key (`cfg.section("ema")`)."""
        extra = self.__pydantic_extra__ or {}
        if key not in extra:
            raise KeyError(f"no config section '{key}' (registered: {', '.join(extra)})")
        return extra[key]

    def methods(self, selected_only: bool = True) -> list[Any]:
        """The methods this config uses: its variant, head and loss, then every trick that
        acts (every trick when not `selected_only`), in registry order."""
        chosen = [
            slot_method("variant", self.model.variant.name),
            slot_method("head", self.model.head.name),
            slot_method("loss", self.loss.name),
        ]
        tricks = methods_of("trick").values()
        return chosen + [m for m in tricks if not selected_only or m.active(self.section(m.key))]

    @property
    def effective_lr(self) -> float:
        """Learning rate after the batch-size scaling rule (resolved runs: optim.lr)."""
        base = self.optim.base_batch_size or self.batch_size
        ratio = self.batch_size / base
        if self.optim.lr_scaling == "linear":
            return self.optim.lr * ratio
        if self.optim.lr_scaling == "sqrt":
            return self.optim.lr * ratio**0.5
        return self.optim.lr
