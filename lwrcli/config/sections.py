"""The core sections of a run's config (model, loss, lwr, optim, schedule, data, init, log):
one pydantic model each, every one forbidding unknown keys.

The sections a method brings (a loss's own settings, a head, a model variant, a training
trick) are defined in that method's module (lwrcli.methods) on the bases here, and reach the
config through the registry (lwrcli.config.slots): this floor names no method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from lwrcli.config.slots import validate_slot


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Section(Strict):
    """A method's config section (a training trick's top-level key, e.g. `ema:`)."""


class SlotSection(Section):
    """A member of a slot (`loss`, `model.head`, `model.variant`): the method named `name`
    validates only its own fields."""

    name: str


class HeadSection(SlotSection):
    """`model.head`: the classifier on the features (linear, cosine, a fixed head, ...)."""


class VariantSection(SlotSection):
    """`model.variant`: a change to the network's structure (plain: none)."""


class LossSection(SlotSection):
    """`loss`: the task loss. Re-weighting is a schedule beside the loss, so every loss has it:
    none, class-balanced from the start (cb), or deferred class-balanced from `drw_epoch`
    (drw, the LDAM-DRW recipe)."""

    reweight: Literal["none", "cb", "drw"] = "none"
    drw_epoch: int = Field(160, ge=0, description="0-based epoch where DRW switches on")
    beta: float = Field(0.9999, ge=0.0, lt=1.0, description="effective-number beta")


def _slot(slot: str) -> Any:
    """A field validator that picks the registered section class by the value's `name`."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return validate_slot(slot, value)

    return validate


class ModelConfig(Strict):
    # Built-in (small_cnn, resnet32, resnet50, resnext50_32x4d, resnet152), any torchvision
    # classifier as `torchvision:<name>`, `timm:<name>` with the optional timm extra, or
    # `clip:<arch>`. The name is checked when the run is resolved (lwrcli.train.resolve).
    name: str = "resnet32"
    # The classifier: linear (with bias), cosine (logits s * cos(x, w_c); LDAM and LIFT) or a
    # registered fixed head; see `lwr presets show` and docs/relatives.md.
    head: SerializeAsAny[HeadSection] = Field(default_factory=lambda: validate_slot("head", {}))
    # A change to the network's structure (plain: none; a two-branch or multi-expert model).
    variant: SerializeAsAny[VariantSection] = Field(
        default_factory=lambda: validate_slot("variant", {})
    )
    # Local weights file (safetensors, or a torchvision/timm .pth state dict) for fine-tuning;
    # never downloaded. Head keys of another shape are left out (and reported).
    pretrained: Path | None = None
    # Recipes that fine-tune (Places-LT) refuse to start from scratch by accident.
    pretrained_required: bool = False
    # Module paths whose parameters are not trained, e.g. [conv1, bn1, layer1].
    freeze: list[str] = Field(default_factory=list)
    width: int = Field(32, ge=4, le=512, description="base width of small_cnn")
    # resnet32's first-stage width w (stages w/2w/4w, features 4w): 16 is LDAM-DRW's net; a
    # fixed simplex head on CIFAR-100 needs 32, so its 128-d features can hold 100 classes.
    resnet_width: int = Field(16, ge=4, le=256, description="resnet32 only")
    # Normalisation of the built-in small_cnn and resnet32: batch statistics (the reference
    # recipes) or GroupNorm, which does not depend on the per-device batch.
    norm: Literal["batch", "group"] = "batch"
    # Pretrained weights by name, fetched once into the hub cache of the model's library:
    # a torchvision weight enum (IMAGENET1K_V2, DEFAULT), a timm pretrained tag, or an
    # open_clip tag for clip:<arch> (openai, laion2b_s34b_b88k, ...). Offline, the cache is used.
    weights: str | None = None
    # Initial classifier rows: random, the class names' text embeddings (CLIP models; needs
    # a cosine head), or the mean feature of each class's training images.
    head_init: Literal["random", "text", "class_mean"] = "random"
    # clip: models: the head on CLIP's joint image-text space (true: the zero-shot geometry)
    # or, as LIFT does, on a ViT's features before the image projection (false; text rows
    # reach that space through the transposed projection).
    clip_projection: bool = False
    # Prompt templates for head_init=text and zero-shot: open_clip's OpenAI ImageNet ensemble
    # (80 templates) or the single "a photo of a {}.".
    text_templates: Literal["openai", "single"] = "openai"
    # What trains (LIFT compares these): everything, the head only, biases (BitFit),
    # LayerNorm parameters, LoRA (peft), bottleneck adapters, AdaptFormer, visual prompts (VPT),
    # or a tuning method a plugin registered. All but `full` freeze the pretrained base; the
    # head always trains. Checked when the run is resolved.
    tuning: str = "full"
    # Bottleneck width (adapter, adaptformer), LoRA rank or prompt tokens per block (vpt);
    # None: LIFT's rule, the largest power of two <= C / (2 * blocks), at least 1.
    tuning_dim: int | None = Field(None, ge=1, le=4096)

    _head = field_validator("head", mode="wrap")(_slot("head"))
    _variant = field_validator("variant", mode="wrap")(_slot("variant"))

    @property
    def cosine(self) -> bool:
        """Whether the head outputs (scaled) cosines of normalised rows and features."""
        return self.head.name == "cosine"

    @model_validator(mode="after")
    def _norm_only_for_builtin(self) -> ModelConfig:
        if self.norm != "batch" and self.name not in ("small_cnn", "resnet32"):
            raise ValueError(
                f"model.norm={self.norm} applies to the built-in small_cnn and resnet32 only, "
                f"not to {self.name}"
            )
        return self

    @model_validator(mode="after")
    def _text_head_needs_clip(self) -> ModelConfig:
        if self.head_init == "text" and not self.name.startswith("clip:"):
            raise ValueError(
                f"model.head_init=text needs a CLIP model (clip:<arch>), not {self.name}: "
                "only CLIP has a text tower to encode the class names"
            )
        if self.head_init == "text" and not self.cosine:
            raise ValueError(
                "model.head_init=text sets unit rows from text embeddings: set "
                "model.head.name=cosine (and model.head.scale, 25 in LIFT's recipe)"
            )
        return self

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> ModelConfig:
        if self.weights is not None and self.pretrained is not None:
            raise ValueError(
                f"model.weights ({self.weights}) and model.pretrained ({self.pretrained}) both "
                "name the starting weights: keep one (--set model.weights=null to use your file)"
            )
        return self


class LWRScheduleConfig(Strict):
    kind: Literal["constant", "linear", "cosine", "step"] = "linear"
    start: float = Field(0.0, ge=0.0, description="epochs")
    end: float | None = Field(None, ge=0.0, description="epochs; default: the last epoch")


class LWRConfig(Strict):
    enabled: bool = False
    # A number, or `auto`: resolved at start-up from the dataset's class count C by the
    # measured rule (lwrcli.train.lwr.lambda_for_classes) and saved in config.yaml as that number.
    lambda_max: Annotated[float, Field(ge=0.0, le=1e4)] | Literal["auto"] = 0.1
    # Margin on the projected cosine, or `init`: each pair is repelled only when it grows more
    # similar than it was at initialisation (heads initialised from text embeddings start far
    # above any fixed margin chosen for random heads).
    theta: Annotated[float, Field(ge=-1.0, le=1.0)] | Literal["init"] = 0.4
    power: Literal[1, 2] = 1
    proj: bool = True
    # Rows per block of the C x C similarity computation: memory O(block_size x C).
    block_size: int = Field(1024, ge=1, le=65536)
    schedule: LWRScheduleConfig = LWRScheduleConfig()


class OptimConfig(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0.0, le=100.0, description="lr at base_batch_size")
    # The lr above is for this batch size; another batch size rescales it by `lr_scaling`
    # when the run is resolved (config.yaml then records the scaled lr at the run's batch).
    base_batch_size: int | None = Field(None, ge=1)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adamw only")
    weight_decay: float = Field(2e-4, ge=0.0, le=1.0)
    # No weight decay on biases and normalisation-layer parameters. None: on for adamw, off
    # for sgd (today's SGD recipes decay everything).
    no_decay_norm_bias: bool | None = None
    # lr multipliers: the classifier head, everything else (a new head often wants ~10x).
    head_lr_mult: float = Field(1.0, ge=0.0, le=1000.0)
    backbone_lr_mult: float = Field(1.0, ge=0.0, le=1000.0)
    # Layer-wise lr decay for ViT-style models (a flat list of blocks): block i gets
    # decay^(num_blocks - i), embeddings decay^(num_blocks + 1), head and final norm 1.
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)
    clip_grad_norm: float | None = Field(None, gt=0.0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("optim.betas must both be in [0, 1)")
        return betas

    @property
    def decay_norm_bias(self) -> bool:
        """Whether biases and norm parameters get weight decay (see no_decay_norm_bias)."""
        if self.no_decay_norm_bias is None:
            return self.name == "sgd"
        return not self.no_decay_norm_bias


class ScheduleConfig(Strict):
    kind: Literal["multistep", "cosine", "constant"] = "multistep"
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up, epochs")
    milestones: list[int] = Field(default_factory=list, description="0-based epochs")
    factors: list[float] = Field(default_factory=list, description="lr multiplier from each")
    min_lr: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _milestones_match_factors(self) -> ScheduleConfig:
        if len(self.milestones) != len(self.factors):
            raise ValueError(
                f"schedule.milestones ({len(self.milestones)} values) and schedule.factors "
                f"({len(self.factors)} values) must have the same length"
            )
        if self.milestones != sorted(self.milestones):
            raise ValueError("schedule.milestones must be increasing")
        return self


class DataConfig(Strict):
    # Small images (CIFAR, synthetic): per-batch tensor ops on the device.
    crop_padding: int = Field(4, ge=0, le=64)
    flip: bool = True
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
    # Small images for a model made for larger inputs (a CLIP ViT at 224 px on CIFAR, as
    # LIFT does): each batch is upsampled on the device (bilinear) to this size after the crop
    # and flip; None keeps the stored size, or, for a model that takes one input size only,
    # becomes that size when the run is resolved.
    array_resize: int | None = Field(None, ge=8, le=1024)
    # Large images (list files / folders): DataLoader with workers.
    image_size: int = Field(224, ge=8, le=1024)
    resize: int = Field(256, ge=8, le=2048)
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)
    num_workers: int = Field(4, ge=0, le=128)
    gpu_decode: bool = False
    # Model selection split: 'val' when the dataset has one; 'test' only when asked explicitly.
    select_on: Literal["val", "test", "none"] = "val"
    # Training order (lwrcli.data.samplers), both pipelines; an epoch is always N draws.
    sampler: Literal["instance", "class_balanced", "square_root", "progressive"] = "instance"
    num_samples_cls: int = Field(4, ge=1, le=1024, description="class_balanced: images per pick")
    # Automatic augmentation policy on both pipelines, after crop/flip and before
    # normalisation: torchvision.transforms.v2 per image (image lists), or per-image ops on
    # uint8 batches on the device (small images; lwrcli.data.device_augment).
    augment: Literal["none", "randaugment", "autoaugment", "trivialaugment"] = "none"
    randaugment_ops: int = Field(2, ge=1, le=10, description="RandAugment N: ops per image")
    randaugment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment M: bin of 0..30")
    # AutoAugment's learned sub-policies: auto = cifar10 for device-resident small images,
    # imagenet for image lists (the data each policy was searched on).
    autoaugment_policy: Literal["auto", "cifar10", "imagenet"] = "auto"


class InitConfig(Strict):
    # Start from another run's weights (a stage-2 run): same classes, same prepared dataset.
    checkpoint: Path | None = None
    # Re-initialise the classifier head after loading (cRT).
    reset_classifier: bool = False


class LogConfig(Strict):
    """Live logging to experiment trackers (lwrcli.train.live_log). Where a run is watched, not
    what it trains: `lwr report` and a run's continuation ignore this block."""

    # Each tracker is an optional extra (`lwrcli[logging]`, `lwrcli[wandb]`); one that cannot
    # start or fails later warns once and the run goes on without it. One name or a list.
    to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    # None: MLFLOW_TRACKING_URI, else MLflow's own default. `file:PATH` is a local file store.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = Field(None, description="None: MLflow's default experiment")
    # None: WANDB_PROJECT, else W&B's default ("uncategorized").
    wandb_project: str | None = None
    wandb_mode: Literal["online", "offline"] = "online"

    @field_validator("to", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value
