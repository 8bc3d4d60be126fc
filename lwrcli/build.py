"""Build a run's components once from its config: model, loss, optimizer, LWR, wrappers.

Each piece comes from its own module's factory (`build_model`, `build_loss`,
`build_optimizer`, `build_regularizer`; data from `build_data`), so adding a loss, a sampler
or an optimizer touches one factory and its test; the Trainer only runs the loop.
"""

from __future__ import annotations

import torch
from torch import nn

from lwrcli.config import TrainConfig
from lwrcli.data.loading import DataBundle
from lwrcli.distributed import DistInfo
from lwrcli.engine import Components
from lwrcli.losses import build_loss
from lwrcli.lwr import build_regularizer
from lwrcli.models import build_model, model_data_defaults
from lwrcli.optim import build_optimizer
from lwrcli.stage2 import prepare_stage2


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


def wrap_for_training(
    model: nn.Module, cfg: TrainConfig, device: torch.device, dist: DistInfo
) -> nn.Module:
    """DDP across processes under torchrun, then torch.compile when asked."""
    wrapped = model
    if dist.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def build_components(
    cfg: TrainConfig,
    data: DataBundle,
    device: torch.device,
    dist: DistInfo | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Components:
    """Model (seeded with cfg.seed, so its initialisation does not depend on data loading),
    loss, optimizer and regularizer; `weights` restores a checkpoint's model state."""
    dist = dist or DistInfo()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes)
    # Stage 2: init weights (not when resuming), head reset, frozen backbone, LWS scales.
    model = prepare_stage2(model, cfg, data.manifest, load=weights is None).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if weights is not None:
        model.load_state_dict(weights)
    counts = torch.tensor(data.class_counts, dtype=torch.float64)
    lr = cfg.effective_lr
    return Components(
        model=wrap_for_training(model, cfg, device, dist),
        raw_model=model,
        loss=build_loss(cfg.loss, counts).to(device),
        optimizer=build_optimizer(model, cfg.optim, lr),
        regularizer=build_regularizer(cfg.lwr, cfg.epochs),
        data=data,
        base_lr=lr,
    )
