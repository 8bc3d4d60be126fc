"""The one resolve step: the asked config -> the resolved one, for this model, dataset and
device. train, eval, zero-shot, predict and export all call it; nothing downstream resolves
again, and resolving a resolved config changes nothing.

It covers what the config alone cannot decide:
- the model: its name, named weights and tuning method exist (checked here, not when the
  config is validated, so validation never imports a model library);
- the model's input needs (open_clip style: the factory reports size and mean/std): the data
  settings a config leaves unset take the model's, and a model that takes one input size only
  (a ViT) gets small-image arrays upsampled to it (`data.array_resize`), with a note;
- speed settings (`auto` -> concrete for this device and model);
- `lwr.lambda_max: auto` -> the number for the dataset's class count;
- lr scaling: `optim.lr` becomes the lr at the run's batch size (`base_batch_size` = it).

config.yaml and every checkpoint record the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lwrcli.config import TrainConfig
from lwrcli.errors import UserError
from lwrcli.models import is_convolutional_name, model_data_defaults
from lwrcli.models.families import check_model_name, fixed_input_size
from lwrcli.models.hub import resolve as resolve_weights
from lwrcli.models.tuning import check_tuning
from lwrcli.runtime.device import auto_amp
from lwrcli.train.lwr import lambda_for_classes


@dataclass
class Resolved:
    """A resolved config, and what resolving decided that the user should read once."""

    cfg: TrainConfig
    notes: list[str] = field(default_factory=list)
    # The speed settings as asked, for the start-up line ('asked: amp auto, ...').
    requested: str = ""
    # Why `amp: auto` became what it did on this device ('' when amp was given).
    amp_why: str = ""


def check_model(cfg: TrainConfig) -> None:
    """The model's name, its named weights and its tuning method exist (UserError)."""
    model = cfg.model
    try:
        check_model_name(model.name)
    except ValueError as exc:
        raise UserError(f"model.name={model.name}: {exc}.") from None
    if model.weights is not None:
        resolve_weights(model.name, model.weights)
    check_tuning(model.tuning)


def with_model_data_defaults(cfg: TrainConfig) -> TrainConfig:
    """Input size and normalisation from the model where it defines them (timm's
    pretrained_cfg, torchvision's weight transforms, open_clip's); values set in `data` win."""
    defaults = model_data_defaults(cfg.model.name)
    if not defaults:
        return cfg
    given = cfg.data.model_fields_set
    update = {k: v for k, v in defaults.items() if k not in given}
    if not update:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def with_array_resize(cfg: TrainConfig, storage: str, stored_size: int | None) -> Resolved:
    """Small-image arrays for a model that takes one input size only: upsampled to it."""
    if storage != "arrays" or cfg.data.array_resize is not None:
        return Resolved(cfg)
    size = fixed_input_size(cfg.model.name)
    if size is None or size == stored_size:
        return Resolved(cfg)
    data = cfg.data.model_copy(update={"array_resize": size})
    note = (
        f"{cfg.model.name} takes {size}x{size} inputs only: the {stored_size}x{stored_size} "
        f"images are upsampled to {size} on the device (data.array_resize={size}; set it to "
        "choose another size)."
    )
    return Resolved(cfg.model_copy(update={"data": data}), [note])


def resolve_speed_settings(
    cfg: TrainConfig, device: torch.device, storage: str = "arrays"
) -> TrainConfig:
    """The config with `auto` speed settings made concrete for this device and model.

    amp: bf16 on CUDA where the GPU supports it and on a CPU with native bf16 instructions
    (AVX512-BF16, AMX-BF16: `lwrcli.runtime.device.auto_amp`), none (fp32) elsewhere, where
    bf16 would be emulated, many times slower. channels_last: on for
    convolutional models on every device. compile: on for CUDA; off on CPU, where compiling
    ResNet-32's training step takes longer than it saves within the first epoch
    (docs/training.md, 'Speed settings'). compile_mode: default; `reduce-overhead` (CUDA
    graphs) is one setting away but stays out of `auto` until it has been measured on a GPU.
    Concrete values are kept as given."""
    cuda = device.type == "cuda"
    amp = cfg.amp
    if amp == "auto":
        amp = auto_amp(device)[0]
    channels_last = cfg.channels_last
    if channels_last == "auto":
        channels_last = is_convolutional_name(cfg.model.name)
    compile_ = cfg.compile
    if compile_ == "auto":
        compile_ = cuda
    mode = "default" if cfg.compile_mode == "auto" else cfg.compile_mode
    return cfg.model_copy(
        update={
            "amp": amp,
            "channels_last": channels_last,
            "compile": compile_,
            "compile_mode": mode,
        }
    )


def speed_summary(cfg: TrainConfig) -> str:
    """One phrase for the run's start-up line, e.g. 'amp bf16, channels_last on, compile off'."""

    def on(value: object) -> str:
        return "on" if value is True else "off" if value is False else str(value)

    compiled = on(cfg.compile)
    if cfg.compile is True and cfg.compile_mode != "default":
        compiled += f" ({cfg.compile_mode})"
    return f"amp {cfg.amp}, channels_last {on(cfg.channels_last)}, compile {compiled}"


def resolve_lambda_max(cfg: TrainConfig, num_classes: int) -> Resolved:
    """`lwr.lambda_max: auto` made the number used for C = num_classes."""
    if cfg.lwr.lambda_max != "auto":
        return Resolved(cfg)
    value = lambda_for_classes(num_classes)
    # Several classifier heads, or a loss averaged over them, change LWR's share of each
    # head's gradient: the chosen methods say by how much (Method.lambda_factor).
    factor = 1.0
    for method in cfg.methods():
        factor *= method.lambda_factor(cfg)
    if factor != 1.0:
        value = float(f"{value * factor:.2g}")
    lwr = cfg.lwr.model_copy(update={"lambda_max": value})
    note = ""
    if cfg.lwr.enabled:
        times = f" x {factor:.3g} for the run's classifier heads" if factor != 1.0 else ""
        note = (
            f"lwr.lambda_max auto: {value:g} for {num_classes} classes (10 · share(100) / "
            f"share(C){times}, docs/lwr.md 'How strong is LWR?'); saved in config.yaml."
        )
    return Resolved(cfg.model_copy(update={"lwr": lwr}), [note] if note else [])


def resolve_lr(cfg: TrainConfig) -> Resolved:
    """optim.lr at the run's batch size (the recipe's lr is for optim.base_batch_size)."""
    optim = cfg.optim
    base = optim.base_batch_size
    if base is None or base == cfg.batch_size:
        return Resolved(cfg)
    lr = cfg.effective_lr
    note = ""
    if optim.lr_scaling != "none":
        note = (
            f"lr {lr:g}: {optim.lr_scaling} scaling of lr {optim.lr:g} from batch {base} to "
            f"{cfg.batch_size}."
        )
    resolved = optim.model_copy(update={"lr": lr, "base_batch_size": cfg.batch_size})
    return Resolved(cfg.model_copy(update={"optim": resolved}), [note] if note else [])


def resolve_config(
    cfg: TrainConfig,
    device: torch.device,
    storage: str = "arrays",
    num_classes: int | None = None,
    stored_size: int | None = None,
) -> Resolved:
    """The one resolve step (see the module docstring). `storage` and `stored_size` are the
    prepared dataset's (its manifest), `num_classes` its class count."""
    check_model(cfg)
    notes: list[str] = []
    cfg = with_model_data_defaults(cfg)
    step = with_array_resize(cfg, storage, stored_size)
    cfg, notes = step.cfg, notes + step.notes
    requested = speed_summary(cfg)
    amp_why = auto_amp(device)[1] if cfg.amp == "auto" else ""
    cfg = resolve_speed_settings(cfg, device, storage)
    if num_classes is not None:
        step = resolve_lambda_max(cfg, num_classes)
        cfg, notes = step.cfg, notes + step.notes
    step = resolve_lr(cfg)
    return Resolved(step.cfg, notes + step.notes, requested, amp_why)
