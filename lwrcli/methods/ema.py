"""Exponential moving average of the weights (section `ema:`).

torch.optim.swa_utils.AveragedModel keeps the average: a copy of the model made when the run
is built (the average starts at the initial weights, w_ema_0 = w_0) and updated after every
`ema.every`-th optimizer step (a `Components.after_step` hook):

    w_ema_n = d_n * w_ema_(n-1) + (1 - d_n) * w_n,   d_n = decay, or with `warmup`
    d_n = min(decay, (1 + n) / (10 + n))              (TensorFlow's num_updates rule)

with `use_buffers=True`: BatchNorm's running statistics are averaged like the weights (the
average is evaluated with statistics that match its own weights, as timm's ModelEma does);
integer buffers (BatchNorm's batch counter) are copied. When enabled, training's evaluation
and model selection use the average; checkpoints store it beside the raw weights as
`lwr_state.ema.<key>` tensors (plus `lwr_state.ema_steps`), which `load_checkpoint` hands to
eval, analyze-weights, predict and export; resume restores both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.optim.swa_utils import AveragedModel

from lwrcli.checkpoint.files import EMA_PREFIX, EMA_STEPS, Checkpoint
from lwrcli.checkpoint.frozen_base import stored_state
from lwrcli.config.sections import Section
from lwrcli.errors import UserError
from lwrcli.methods.base import Method, RunParts
from lwrcli.models.heads import classifier_key


class EMAConfig(Section):
    """Exponential moving average of the weights: what training evaluates and selects on,
    and what a checkpoint's users (eval, predict, export, analysis) load."""

    enabled: bool = False
    decay: float = Field(0.9999, ge=0.0, lt=1.0, description="per update")
    every: int = Field(1, ge=1, le=100000, description="optimizer steps between updates")
    # decay min(decay, (1 + n) / (10 + n)) at the n-th update, so short runs average too.
    warmup: bool = False


class WeightEMA:
    """The moving average of `model`'s weights and buffers; `after_step` after each optimizer
    step. State (the average, steps seen, updates made) round-trips through checkpoint
    tensors, so a resumed run continues the same average bit for bit."""

    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        self.model, self.cfg = model, cfg
        self.steps = 0  # optimizer steps seen
        self.updates = 0  # averaging updates made (n above)
        self._decay = cfg.decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.update_parameters(model)  # the first call copies: w_ema_0 = w_0
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (what evaluation runs)."""
        return self.averaged.module

    def decay_at(self, n: int) -> float:
        """d_n of the n-th update (1-based)."""
        if self.cfg.warmup:
            return min(self.cfg.decay, (1.0 + n) / (10.0 + n))
        return self.cfg.decay

    @torch.no_grad()
    def _average(
        self, ema: Sequence[torch.Tensor], current: Sequence[torch.Tensor], _: torch.Tensor
    ) -> None:
        """AveragedModel's multi_avg_fn for one (device, dtype) group, like
        get_ema_multi_avg_fn but with the decay of this update and counters copied."""
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(list(ema), list(current), 1.0 - self._decay)
        else:
            torch._foreach_copy_(list(ema), list(current))

    def after_step(self) -> None:
        self.steps += 1
        if self.steps % self.cfg.every:
            return
        self.updates += 1
        self._decay = self.decay_at(self.updates)
        self.averaged.update_parameters(self.model)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensors: the average of what the checkpoint stores of the model (all of
        it, or a frozen-base run's trained tensors and head) and the counters."""
        state, _ = stored_state(self.module, classifier_key(self.module))
        tensors = {EMA_PREFIX + k: v for k, v in state.items()}
        tensors[EMA_STEPS] = torch.tensor([self.steps, self.updates], dtype=torch.int64)
        return tensors

    def load(self, ckpt: Checkpoint) -> None:
        """Continue the average a checkpoint holds (refused when it holds none: a run that
        turns EMA on halfway would silently start the average at the resume point)."""
        if EMA_STEPS not in ckpt.extras:
            raise_no_ema(ckpt)
        average = {
            k[len(EMA_PREFIX) :]: v for k, v in ckpt.extras.items() if k.startswith(EMA_PREFIX)
        }
        own = self.module.state_dict()
        with torch.no_grad():
            for key, value in average.items():
                own[key].copy_(value)
        self.steps, self.updates = (int(v) for v in ckpt.extras[EMA_STEPS])
        self.averaged.n_averaged.fill_(self.updates + 1)


def raise_no_ema(ckpt: Checkpoint) -> None:
    raise UserError(
        f"ema.enabled is true but checkpoint {ckpt.path} holds no moving average "
        f"({EMA_STEPS} is missing): it was saved by a run without EMA, so the average cannot "
        "continue. Resume with the run's own config, or start a new run with ema.enabled=true."
    )


class EMAMethod(Method):
    name, slot, key, label, config = "ema", "trick", "ema", "EMA", EMAConfig

    def active(self, section: Any) -> bool:
        return section.enabled

    def acting(self, section: dict[str, Any]) -> set[str]:
        return set(section) if section.get("enabled") else {"enabled"}

    def describe(self, section: Any) -> str:
        return f"EMA {section.decay:g}"

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        """Average `parts.raw_model`: the hook after each step, evaluation on the average,
        its tensors in every checkpoint; `saved` (a resume) restores the average."""
        ema = WeightEMA(parts.raw_model, cfg.section("ema"))
        if saved is not None:
            ema.load(saved)
        parts.after_step.append(ema.after_step)
        parts.eval_model = ema.module
        parts.checkpoint_tensors.append(ema.state_tensors)


METHOD = EMAMethod()
