"""The sections of a run's config (model, loss, lwr, optim, schedule, data, ema, init, stage2,
log): one pydantic model each, every one forbidding unknown keys.

`lwrcli.config.schema` assembles them into `TrainConfig` and re-exports them; import them
from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lwrcli.config.rules import check_model_heads


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    # Built-in (small_cnn, resnet32, resnet50, resnext50_32x4d, resnet152), any torchvision
    # classifier as `torchvision:<name>`, or `timm:<name>` with the optional timm extra.
    name: str = "resnet32"
    # Cosine classifier: logits are s * cos(x, w_c); LDAM needs it (scale lives in the loss).
    cosine_classifier: bool = False
    # Local weights file (safetensors, or a torchvision/timm .pth state dict) for fine-tuning;
    # never downloaded. Head keys of another shape are left out (and reported).
    pretrained: Path | None = None
    # Recipes that fine-tune (Places-LT) refuse to start from scratch by accident.
    pretrained_required: bool = False
    # Module paths whose parameters are not trained, e.g. [conv1, bn1, layer1].
    freeze: list[str] = Field(default_factory=list)
    width: int = Field(32, ge=4, le=512, description="base width of small_cnn")
    # resnet32's first-stage width w (stages w/2w/4w, features 4w): 16 is LDAM-DRW's net; the
    # ETF recipe on CIFAR-100 uses 32, so its 128-d features can hold a 100-class simplex.
    resnet_width: int = Field(16, ge=4, le=256, description="resnet32 only")
    # A classifier fixed at a simplex ETF (Yang et al. 2022, lwrcli.models.heads.ETFHead):
    # never trained; logits are cosines of BatchNorm'd, normalised features with its rows.
    etf_classifier: bool = False
    # The ETF head's BatchNorm1d on the features before normalising (the authors' head).
    etf_feature_bn: bool = True
    # Normalisation of the built-in small_cnn and resnet32: batch statistics (the reference
    # recipes) or GroupNorm, which does not depend on the per-device batch.
    norm: Literal["batch", "group"] = "batch"
    # Pretrained weights by name, fetched once into the hub cache of the model's library:
    # a torchvision weight enum (IMAGENET1K_V2, DEFAULT), a timm pretrained tag, or an
    # open_clip tag for clip:<arch> (openai, laion2b_s34b_b88k, ...). Offline, the cache is used.
    weights: str | None = None
    # Scale s of a cosine classifier's logits s * cos(x, w_c): 1 leaves the scale to the loss
    # (LDAM); LIFT's cosine head from text embeddings uses 25.
    cosine_scale: float = Field(1.0, gt=0.0, le=1000.0)
    # Initial classifier rows: random, the class names' text embeddings (CLIP models; needs
    # model.cosine_classifier), or the mean feature of each class's training images.
    head_init: Literal["random", "text", "class_mean"] = "random"
    # clip: models: the head on CLIP's joint image-text space (true: the zero-shot geometry)
    # or, as LIFT does, on a ViT's features before the image projection (false; text rows
    # reach that space through the transposed projection).
    clip_projection: bool = False
    # Prompt templates for head_init=text and zero-shot: open_clip's OpenAI ImageNet ensemble
    # (80 templates) or the single "a photo of a {}.".
    text_templates: Literal["openai", "single"] = "openai"
    # What trains (LIFT compares these): everything, the head only, biases (BitFit),
    # LayerNorm parameters, LoRA (peft), bottleneck adapters, AdaptFormer, visual prompts (VPT).
    # All but `full` freeze the pretrained base; the head always trains.
    tuning: Literal[
        "full", "head", "bitfit", "layernorm", "lora", "adapter", "adaptformer", "vpt"
    ] = "full"
    # Bottleneck width (adapter, adaptformer), LoRA rank or prompt tokens per block (vpt);
    # None: LIFT's rule, the largest power of two <= C / (2 * blocks), at least 1.
    tuning_dim: int | None = Field(None, ge=1, le=4096)
    # BBN (Zhou et al. 2020): the last residual block duplicated into a conventional and a
    # re-balancing branch fed by the instance and the reversed sampler, one head over both
    # (lwrcli.models.bbn, lwrcli.data.paired). ResNets only (resnet32, torchvision ResNets).
    bbn: bool = False

    @model_validator(mode="after")
    def _norm_only_for_builtin(self) -> ModelConfig:
        if self.norm != "batch" and self.name not in ("small_cnn", "resnet32"):
            raise ValueError(
                f"model.norm={self.norm} applies to the built-in small_cnn and resnet32 only, "
                f"not to {self.name}"
            )
        return self

    @model_validator(mode="after")
    def _fixed_head_rules(self) -> ModelConfig:
        check_model_heads(self)
        return self

    @model_validator(mode="after")
    def _text_head_needs_clip(self) -> ModelConfig:
        if self.head_init == "text" and not self.name.startswith("clip:"):
            raise ValueError(
                f"model.head_init=text needs a CLIP model (clip:<arch>), not {self.name}: "
                "only CLIP has a text tower to encode the class names"
            )
        if self.head_init == "text" and not self.cosine_classifier:
            raise ValueError(
                "model.head_init=text sets unit rows from text embeddings: set "
                "model.cosine_classifier=true (and model.cosine_scale, 25 in LIFT's recipe)"
            )
        return self

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> ModelConfig:
        if self.weights is None:
            return self
        if self.pretrained is not None:
            raise ValueError(
                f"model.weights ({self.weights}) and model.pretrained ({self.pretrained}) both "
                "name the starting weights: keep one (--set model.weights=null to use your file)"
            )
        # Imported here, like families below: the hub module must not import config.
        from lwrcli.models.hub import check_weights

        check_weights(self.name, self.weights)
        return self

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        # Imported here: families imports torch(vision) lazily and must not import config.
        from lwrcli.models.families import check_model_name

        return check_model_name(name)


class LossConfig(Strict):
    # dr: dot regression for a fixed ETF head (model.etf_classifier), lwrcli.methods.losses.
    name: Literal["ce", "focal", "ldam", "bs", "la", "ib", "seql", "dr"] = "ce"
    # Re-weighting schedule, orthogonal to the loss: none, class-balanced from the start (cb),
    # or deferred class-balanced from `drw_epoch` (drw, the LDAM-DRW recipe).
    reweight: Literal["none", "cb", "drw"] = "none"
    drw_epoch: int = Field(160, ge=0, description="0-based epoch where DRW switches on")
    beta: float = Field(0.9999, ge=0.0, lt=1.0, description="effective-number beta")
    focal_gamma: float = Field(1.0, ge=0.0, le=10.0)
    ldam_max_m: float = Field(0.5, ge=0.0, le=5.0)
    ldam_s: float = Field(30.0, gt=0.0, le=100.0)
    la_tau: float = Field(1.0, ge=0.0, le=10.0)
    # Targets become soft (lwrcli.methods.mixing): (1 - ε_y) one-hot + ε_y / C. Uniform ε, or with
    # `label_smoothing_tail` MiSLAS's label-aware ε_y, from this value for the most frequent
    # class to the tail value for the rarest along `label_smoothing_shape` (exp: power p).
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    label_smoothing_tail: float | None = Field(None, ge=0.0, lt=1.0)
    label_smoothing_shape: Literal["concave", "linear", "convex", "exp"] = "concave"
    label_smoothing_power: float = Field(1.0, gt=0.0, le=100.0, description="shape exp only")

    @property
    def smoothing(self) -> bool:
        return self.label_smoothing > 0 or bool(self.label_smoothing_tail)

    # Influence-balanced loss (ib; Park et al., ICCV 2021): CE before `ib_start_epoch`, then
    # w_y CE / (|softmax - onehot|_1 |h|_1 + epsilon) times alpha, h the head's input.
    ib_start_epoch: int = Field(100, ge=0, description="0-based epoch where IB replaces CE")
    ib_alpha: float = Field(1000.0, gt=0.0, le=1e8)
    ib_epsilon: float = Field(0.001, gt=0.0, le=1.0)
    # Per-class weight of the IB phase: inverse frequency scaled to sum C (the authors'
    # IBReweight), or none (then loss.reweight=drw at ib_start_epoch gives their IB + CB).
    ib_class_weight: Literal["inverse", "none"] = "inverse"
    # Softmax equalization loss (seql; Tan et al., CVPR 2020): each non-target class with
    # frequency n_c / sum(n) below seql_lambda leaves the softmax's denominator with
    # probability seql_gamma, drawn per sample and class.
    seql_gamma: float = Field(0.9, ge=0.0, le=1.0)
    seql_lambda: float = Field(0.005, ge=0.0, le=1.0, description="class frequency threshold")

    @model_validator(mode="after")
    def _one_ib_class_weight(self) -> LossConfig:
        if self.name == "ib" and self.ib_class_weight != "none" and self.reweight != "none":
            raise ValueError(
                f"loss.name=ib weights classes itself (loss.ib_class_weight="
                f"{self.ib_class_weight}) and loss.reweight={self.reweight} would weight them "
                "again: set loss.ib_class_weight=none to use the re-weighting schedule (IB + CB "
                "is reweight=drw with drw_epoch=ib_start_epoch), or loss.reweight=none"
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
    # The lr above is for this batch size; another batch size rescales it by `lr_scaling`.
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
    # MaxNorm (weight balancing, Alshammari et al. 2022; lwrcli.methods.maxnorm): after every step,
    # classifier rows longer than a radius are scaled back onto it (bias untouched). The
    # radius is this value (`absolute`), or, as the authors' code sets it, n_min + max_norm *
    # (n_max - n_min) of the head's row norms when the run starts (`relative`, in [0, 1]).
    max_norm: float | None = Field(None, gt=0.0, le=1e4)
    max_norm_mode: Literal["absolute", "relative"] = "absolute"

    @model_validator(mode="after")
    def _relative_max_norm_in_range(self) -> OptimConfig:
        if self.max_norm_mode == "relative" and self.max_norm is not None and self.max_norm > 1:
            raise ValueError(
                f"optim.max_norm={self.max_norm} with max_norm_mode=relative must be in (0, 1]: "
                "the radius is n_min + max_norm * (n_max - n_min) of the starting row norms"
            )
        return self

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
    # and flip; None keeps the stored size.
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
    # Batch-level mixing (lwrcli.methods.mixing), both pipelines: alpha of the Beta(α, α)
    # draw, 0 = off; a batch is mixed with probability mix_prob, by CutMix with mix_switch_prob
    # when both are on.
    mixup_alpha: float = Field(0.0, ge=0.0, le=100.0)
    cutmix_alpha: float = Field(0.0, ge=0.0, le=100.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)
    mix_switch_prob: float = Field(0.5, ge=0.0, le=1.0)

    # Automatic augmentation policy on both pipelines, after crop/flip and before
    # normalisation: torchvision.transforms.v2 per image (image lists), or per-image ops on
    # uint8 batches on the device (small images; lwrcli.data.device_augment).
    augment: Literal["none", "randaugment", "autoaugment", "trivialaugment"] = "none"
    randaugment_ops: int = Field(2, ge=1, le=10, description="RandAugment N: ops per image")
    randaugment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment M: bin of 0..30")
    # AutoAugment's learned sub-policies: auto = cifar10 for device-resident small images,
    # imagenet for image lists (the data each policy was searched on).
    autoaugment_policy: Literal["auto", "cifar10", "imagenet"] = "auto"

    @property
    def mixing(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0


class EMAConfig(Strict):
    """Exponential moving average of the weights (lwrcli.methods.ema): what training evaluates and
    selects on, and what a checkpoint's users (eval, predict, export, analysis) load."""

    enabled: bool = False
    decay: float = Field(0.9999, ge=0.0, lt=1.0, description="per update")
    every: int = Field(1, ge=1, le=100000, description="optimizer steps between updates")
    # decay min(decay, (1 + n) / (10 + n)) at the n-th update, so short runs average too.
    warmup: bool = False


class InitConfig(Strict):
    # Start from another run's weights (a stage-2 run): same classes, same prepared dataset.
    checkpoint: Path | None = None
    # Re-initialise the classifier head after loading (cRT).
    reset_classifier: bool = False


class Stage2Config(Strict):
    """Decoupled classifier training (Kang et al. 2020) on a frozen representation."""

    # crt: re-initialised classifier; lws: only per-class scales s_c learn. Both freeze the
    # backbone, BatchNorm statistics included.
    mode: Literal["none", "crt", "lws"] = "none"
    freeze: Literal["none", "backbone"] = "none"
    # Backbone features computed once and the head trained on them (augmentation must be off).
    cache_features: bool = False
    # MiSLAS's shifted BatchNorm: the frozen backbone's BN running statistics follow the
    # stage-2 (re-sampled) batches; every parameter, BN affine ones included, stays frozen.
    train_bn: bool = False

    @property
    def frozen_backbone(self) -> bool:
        return self.freeze == "backbone" or self.mode != "none"


class LogConfig(Strict):
    """Live logging to experiment trackers (lwrcli.train.live_log). Where a run is watched, not
    what it trains: `lwr report` and a run's continuation ignore this block."""

    # Each tracker is an optional extra (`lwrcli[logging]`, `lwrcli[wandb]`); one that cannot
    # start or fails later warns once and the run goes on without it.
    to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    # None: MLFLOW_TRACKING_URI, else MLflow's own default. `file:PATH` is a local file store.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = Field(None, description="None: MLflow's default experiment")
    # None: WANDB_PROJECT, else W&B's default ("uncategorized").
    wandb_project: str | None = None
    wandb_mode: Literal["online", "offline"] = "online"
