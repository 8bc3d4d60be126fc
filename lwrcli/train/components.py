"""What a run trains, built once by `lwrcli.train.build` and handed to the Trainer
(`lwrcli.train.engine`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lwrcli.data.loading import DataBundle
from lwrcli.methods.losses import CountsLoss
from lwrcli.train.lwr import LWR


@dataclass
class Components:
    """What a run trains, built once by `lwrcli.train.build` and handed to the Trainer.

    `model` is what the step calls (possibly DDP- or compile-wrapped); `raw_model` is the plain
    module whose weights are saved and whose classifier LWR repels.
    """

    model: nn.Module
    raw_model: nn.Module
    loss: CountsLoss
    optimizer: torch.optim.Optimizer
    regularizer: LWR | None
    data: DataBundle
    base_lr: float
    # `lwr.theta: init`: the head's unit rows at initialisation (lwr.reference_rows), (C, d).
    theta_reference: torch.Tensor | None = None
    # Called in order after every optimizer step (a norm projection, a weight average): what a
    # method does to the weights between steps, kept out of the loop itself.
    after_step: list[Callable[[], None]] = field(default_factory=list)
    # Run-level tensors every checkpoint stores (`lwr_state.` keys), e.g. a method's radius.
    run_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    # (x, y, epoch, step) -> (x, targets), applied in order to every training batch: what a
    # method makes of the batch's targets (soft targets for mixing and smoothing).
    batch_transforms: list[
        Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]
    ] = field(default_factory=list)
    # This process's rank under torchrun (0 alone): methods that draw per process use it.
    rank: int = 0
    # What evaluation runs when not the trained model (a weight average), and extra tensors
    # (EXTRA_PREFIX keys) every checkpoint stores.
    eval_model: nn.Module | None = None
    checkpoint_tensors: list[Callable[[], dict[str, torch.Tensor]]] = field(default_factory=list)
    # Called with the 0-based epoch before its first step (a branch weight that follows it).
    before_epoch: list[Callable[[int], None]] = field(default_factory=list)
    # The (C, d) rows LWR repels when not the classifier's weight (a method's class
    # prototypes, computed from trained parameters at each step); None: the classifier.
    lwr_rows: Callable[[], torch.Tensor] | None = None
