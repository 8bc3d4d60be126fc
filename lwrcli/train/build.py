"""Build a run's components once from its resolved config: model, loss, optimizer, LWR, and
what each of the run's methods adds (lwrcli.methods: hooks after each step, state in every
checkpoint, the training loader, ...); the Trainer only runs the loop.

The config is resolved before this (lwrcli.train.resolve); nothing here resolves again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lwrcli.checkpoint.files import THETA_REFERENCE, Checkpoint
from lwrcli.checkpoint.frozen_base import restore_weights
from lwrcli.config import TrainConfig
from lwrcli.data.loading import DataBundle
from lwrcli.errors import UserError
from lwrcli.methods.losses import build_loss
from lwrcli.models import build_model, get_classifier, get_classifiers
from lwrcli.runtime.distributed import DistInfo
from lwrcli.train.components import Components
from lwrcli.train.init_weights import start_weights
from lwrcli.train.lwr import build_regularizer, reference_rows_heads
from lwrcli.train.optim import build_optimizer


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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


def train_loader_hook(cfg: TrainConfig, num_classes: int) -> Any:
    """build_data's `train_wrap`: each method's say on the training loader, in order."""

    def wrap(loader: Any, second: Callable[..., Any]) -> Any:
        for method in cfg.methods():
            loader = method.train_loader(loader, second, cfg, num_classes)
        return loader

    return wrap


def build_components(
    cfg: TrainConfig,
    data: DataBundle,
    device: torch.device,
    dist: DistInfo | None = None,
    weights: Checkpoint | None = None,
) -> Components:
    """Model (seeded with cfg.seed, so its initialisation does not depend on data loading),
    loss, optimizer and regularizer, then each method's additions in registry order;
    `weights` restores a checkpoint's model state (a resumed run)."""
    dist = dist or DistInfo()
    methods = cfg.methods()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, class_names=data.manifest.class_names)
    if cfg.sync_bn:
        if device.type != "cuda":
            raise UserError(
                "sync_bn=true needs GPUs: torch's SyncBatchNorm runs on CUDA only. On CPU use "
                "model.norm=group (batch-independent) or sync_bn=false."
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Init weights (not when resuming) and head reset, then what the methods change (stage 2:
    # a frozen backbone, LWS's scales).
    model = start_weights(model, cfg, data.manifest, load=weights is None)
    for method in methods:
        model = method.adapt_run_model(model, cfg)
    model = model.to(device)
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
        # The head as this run starts it (text, class means, cRT reset, ...): each pair's margin
        # (one set of rows per head where the model has several).
        heads = [c.weight for c in get_classifiers(model)]
        theta_reference = reference_rows_heads(heads, cfg.lwr.proj)
    loss = build_loss(cfg.loss, counts, seed=cfg.seed).to(device)
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
        rank=dist.rank,
    )
    for method in methods:
        method.attach(parts, cfg, weights)
    for method in methods:
        parts = method.replace_parts(parts, cfg, device)
    return parts
