"""Build a run's components once from its config: model, loss, optimizer, LWR, wrappers.

Each piece comes from its own module's factory (`build_model`, `build_loss`,
`build_optimizer`, `build_regularizer`; data from `build_data`), so adding a loss, a sampler
or an optimizer touches one factory and its test; the Trainer only runs the loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lwrcli.config.schema import TrainConfig
from lwrcli.data.loading import DataBundle
from lwrcli.data.paired import cumulative_alpha
from lwrcli.errors import UserError
from lwrcli.methods.ema import attach_ema
from lwrcli.methods.influence import FeatureCapture
from lwrcli.methods.losses import build_loss
from lwrcli.methods.maxnorm import MAX_NORM_RADIUS, MaxNorm, resolve_radius
from lwrcli.methods.mixing import build_mixer
from lwrcli.methods.stage2 import prepare_stage2
from lwrcli.models import (
    build_model,
    get_classifier,
    is_convolutional_name,
    model_data_defaults,
)
from lwrcli.models.bbn import BBNNet
from lwrcli.runtime.distributed import DistInfo
from lwrcli.train.checkpoint import THETA_REFERENCE, Checkpoint
from lwrcli.train.components import Components
from lwrcli.train.frozen_base import restore_weights
from lwrcli.train.lwr import build_regularizer, reference_rows, resolve_lambda_max
from lwrcli.train.optim import build_optimizer


def with_model_data_defaults(cfg: TrainConfig) -> TrainConfig:
    """Input size and normalisation from the model where it defines them (timm's
    pretrained_cfg, torchvision's weight transforms); values set in `data` win."""
    defaults = model_data_defaults(cfg.model.name)
    if not defaults:
        return cfg
    given = cfg.data.model_fields_set
    update = {k: v for k, v in defaults.items() if k not in given}
    if not update:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def resolve_speed_settings(
    cfg: TrainConfig, device: torch.device, storage: str = "arrays"
) -> TrainConfig:
    """The config with `auto` speed settings made concrete for this device, model and data
    storage (`arrays`: device-resident small images, static shapes; `lists`: DataLoader).

    amp: bf16 on CUDA where the GPU supports it, none (fp32) on CPU. channels_last: on for
    convolutional models on every device. compile: on for CUDA; off on CPU, where compiling
    ResNet-32's training step takes longer than it saves within the first epoch (docs/training.md,
    'Speed settings'). compile_mode: default. `reduce-overhead` (CUDA graphs, for launch-bound
    ResNet-32 at batch 128) is one setting away but stays out of `auto` until it has been
    measured on a GPU. Concrete values are kept as given; resolving a resolved config changes
    nothing.
    """
    cuda = device.type == "cuda"
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "none"
    channels_last = cfg.channels_last
    if channels_last == "auto":
        channels_last = is_convolutional_name(cfg.model.name)
    compile_ = cfg.compile
    if compile_ == "auto":
        compile_ = cuda
    mode = cfg.compile_mode
    if mode == "auto":
        mode = "default"  # reduce-overhead: opt-in until measured on a GPU
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


class CompileFallback(nn.Module):
    """The compiled model, or the eager one where compiling fails.

    torch.compile is lazy: it fails (no C++ compiler, an op dynamo cannot trace, ...) at the
    first call, and AOTAutograd compiles the backward graph only at the first backward. So the
    first call in each mode (train with grad, eval) is tried here; in training mode a trial
    backward compiles the backward graph too (batch-norm buffers are restored and the trial's
    gradients dropped afterwards). On failure the eager model runs from then on and one line
    is logged; the parameters are the same, so nothing else changes.
    """

    def __init__(
        self,
        eager: nn.Module,
        compiled: Callable[..., Any],
        log: Callable[[str], None] = _stderr,
        clone_outputs: bool = False,
    ) -> None:
        super().__init__()
        self.eager = eager
        # CUDA graphs (reduce-overhead) reuse their output memory on the next call; evaluation
        # keeps every batch's logits, so those are copied out.
        self.clone_outputs = clone_outputs
        # Not registered as a submodule: it holds the same parameters as `eager`.
        object.__setattr__(self, "compiled", compiled)
        object.__setattr__(self, "log", log)
        self.tried: set[tuple[bool, bool]] = set()

    def no_sync(self) -> Any:
        """DDP's no_sync of the wrapped model (gradient accumulation under torchrun)."""
        return self.eager.no_sync()

    def forward(self, x: torch.Tensor) -> Any:
        compiled = self.compiled
        if compiled is None:
            return self.eager(x)
        key = (self.training, torch.is_grad_enabled())
        if key in self.tried:
            return self._out(compiled(x))
        try:
            if key == (True, True):
                self._trial_backward(compiled, x)
            out = compiled(x)
        except Exception as exc:  # any compile failure: dynamo, inductor, the C++ toolchain
            object.__setattr__(self, "compiled", None)
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self.log(
                f"Warning: torch.compile failed ({type(exc).__name__}: {first}); "
                "training continues in eager mode."
            )
            return self.eager(x)
        self.tried.add(key)
        return self._out(out)

    def _out(self, out: Any) -> Any:
        return out.clone() if self.clone_outputs and isinstance(out, torch.Tensor) else out

    def _trial_backward(self, compiled: Callable[..., Any], x: torch.Tensor) -> None:
        buffers = [b.detach().clone() for b in self.eager.buffers()]
        try:
            out = compiled(x)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.float().sum().backward()
        finally:  # success or not, the trial leaves no trace in the statistics or gradients
            with torch.no_grad():
                for b, saved in zip(self.eager.buffers(), buffers):
                    b.copy_(saved)
            for p in self.eager.parameters():
                p.grad = None


def wrap_for_training(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    dist: DistInfo,
    log: Callable[[str], None] = _stderr,
) -> nn.Module:
    """DDP across processes under torchrun, then torch.compile when asked (falling back to
    eager with one logged line if compiling fails). `cfg` holds resolved speed settings."""
    wrapped = model
    if dist.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile is True:
        mode = cfg.compile_mode
        # Static shapes for CUDA graphs: one graph per batch shape (train, last, eval).
        kwargs: dict[str, Any] = {} if mode in ("default", "auto") else {"mode": mode}
        if mode == "reduce-overhead":
            kwargs["dynamic"] = False
        compiled = torch.compile(wrapped, **kwargs)
        wrapped = CompileFallback(wrapped, compiled, log, clone_outputs=mode == "reduce-overhead")
    return wrapped


def build_components(
    cfg: TrainConfig,
    data: DataBundle,
    device: torch.device,
    dist: DistInfo | None = None,
    weights: Checkpoint | None = None,
) -> Components:
    """Model (seeded with cfg.seed, so its initialisation does not depend on data loading),
    loss, optimizer and regularizer; `weights` restores a checkpoint's model state. Speed
    settings and `lwr.lambda_max: auto` are resolved here too (train_run resolves them
    earlier, for the data and the run folder)."""
    dist = dist or DistInfo()
    cfg = resolve_speed_settings(cfg, device, data.manifest.storage)
    cfg = resolve_lambda_max(cfg, data.num_classes)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, class_names=data.manifest.class_names)
    if cfg.sync_bn:
        if device.type != "cuda":
            raise UserError(
                "sync_bn=true needs GPUs: torch's SyncBatchNorm runs on CUDA only. On CPU use "
                "model.norm=group (batch-independent) or sync_bn=false."
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Stage 2: init weights (not when resuming), head reset, frozen backbone, LWS scales.
    model = prepare_stage2(model, cfg, data.manifest, load=weights is None).to(device)
    if cfg.channels_last is True:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if weights is not None:
        restore_weights(model, weights)  # a frozen-base run's tensors onto its rebuilt base
    elif cfg.model.head_init == "class_mean":
        from lwrcli.train.head_init import init_head_class_mean

        init_head_class_mean(model, cfg, data, device, dist, _stderr)
    counts = torch.tensor(data.class_counts, dtype=torch.float64)
    lr = cfg.effective_lr
    # A frozen classifier (LWS trains only per-class scales) cannot be repelled: LWR is inert.
    trainable_head = get_classifier(model).weight.requires_grad
    theta_reference = weights.extras.get(THETA_REFERENCE) if weights is not None else None
    if cfg.lwr.theta == "init" and theta_reference is None:
        if weights is not None:
            raise UserError(
                "lwr.theta=init: this checkpoint holds no reference geometry "
                f"({THETA_REFERENCE}); it was written before theta: init existed."
            )
        # The head as this run starts it (text, class means, cRT reset, ...): each pair's margin.
        theta_reference = reference_rows(get_classifier(model).weight, cfg.lwr.proj)
    loss = build_loss(cfg.loss, counts, seed=cfg.seed).to(device)
    if loss.needs_features:  # IB reads the head's input h: a pre-hook on the head keeps it
        loss.features = FeatureCapture(get_classifier(model))
    after_step, run_tensors = max_norm_hooks(cfg, model, weights)
    parts = Components(
        model=wrap_for_training(model, cfg, device, dist),
        raw_model=model,
        loss=loss,
        optimizer=build_optimizer(model, cfg.optim, lr),
        regularizer=(
            build_regularizer(cfg.lwr, cfg.epochs, theta_reference) if trainable_head else None
        ),
        theta_reference=theta_reference,
        data=data,
        base_lr=lr,
        after_step=after_step,
        run_tensors=run_tensors,
        mix=build_mixer(cfg, data.class_counts, dist.rank),
    )
    if cfg.ema.enabled:
        attach_ema(parts, cfg.ema, weights)
    if isinstance(model, BBNNet):  # the model weights its branches as the loader its targets
        bbn, epochs = model, cfg.epochs
        parts.before_epoch.append(lambda epoch: bbn.set_alpha(cumulative_alpha(epoch, epochs)))
    return parts


def max_norm_hooks(
    cfg: TrainConfig, model: nn.Module, weights: Checkpoint | None
) -> tuple[list[Callable[[], None]], dict[str, torch.Tensor]]:
    """MaxNorm's after-step projection of the head's rows and its radius for the checkpoint
    (none without optim.max_norm). A resumed run reuses its saved radius."""
    if cfg.optim.max_norm is None:
        return [], {}
    head = get_classifier(model).weight
    saved = weights.extras.get(MAX_NORM_RADIUS) if weights is not None else None
    if weights is not None and saved is None and cfg.optim.max_norm_mode == "relative":
        raise UserError(
            f"optim.max_norm_mode=relative: this checkpoint holds no radius ({MAX_NORM_RADIUS}); "
            "it was written before MaxNorm existed."
        )
    hook = MaxNorm(head, resolve_radius(cfg.optim, head, saved))
    return [hook], hook.state()
