"""What a method is: one registered unit that declares its name, its config section, its
rules, how it builds and how it is labelled (peft's `register_peft_method`, timm's
`@register_model`).

A method fills a *slot* (`loss`, `head`, `variant`: one of them per run, chosen by name) or
is a *trick* (a top-level section of its own that acts when switched on: MaxNorm, EMA,
mixing, ...). The core calls the hooks below at fixed points and never names a method:

- config:  `check(cfg)` (cross-field rules, ValueError), `describe(section)` (presets table
  and report labels), `acting(section)` (which settings change what a run trains);
- model:   `build_head` (heads), `restructure` (variants), both called by the model factory;
- run:     `check_start(cfg, manifest)` before a run folder exists, `build_loss` (losses),
  `adapt_run_model` (once the starting weights are in: a frozen backbone), `attach(parts,
  cfg, saved)` (hooks after each step or before each epoch, state in every checkpoint, the
  model evaluation runs, transforms of each batch's targets), `replace_parts` (features
  cached once), `train_loader` (what the training loop draws from), `eval_structure` (what
  every user of a checkpoint must rebuild, e.g. LWS's scales).

`parts` is the run's Components (lwrcli.train.components) as `RunParts` describes it, so a
method never imports the floor above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from lwrcli.config.sections import Section
from lwrcli.registry import METHODS

SLOTS = ("loss", "head", "variant", "trick")


class RunParts(Protocol):
    """The parts of a run a method may extend (lwrcli.train.components.Components)."""

    raw_model: nn.Module
    data: Any
    after_step: list[Callable[[], None]]
    before_epoch: list[Callable[[int], None]]
    run_tensors: dict[str, torch.Tensor]
    checkpoint_tensors: list[Callable[[], dict[str, torch.Tensor]]]
    batch_transforms: list[Callable[..., tuple[torch.Tensor, torch.Tensor]]]
    eval_model: nn.Module | None
    loss: Any
    lwr_rows: Callable[[], torch.Tensor] | None


class Method:
    """Base of every method; subclasses set the class attributes and override the hooks they
    need (every hook here does nothing)."""

    name: ClassVar[str]
    slot: ClassVar[str]
    config: ClassVar[type[Section]]
    # Short label for tables and reports ("BS", "LDAM", "EMA").
    label: ClassVar[str]
    # Tricks: the top-level config key of the section ("ema").
    key: ClassVar[str] = ""
    # Losses: whether (N, C) probability targets are accepted (mixup, smoothing, BBN).
    soft_targets: ClassVar[bool] = False

    # --- config ----------------------------------------------------------------------------
    def active(self, section: Any) -> bool:
        """Whether a trick acts with these settings (slot methods always act when chosen)."""
        return True

    def describe(self, section: Any) -> str:
        """The label with the settings that define it, e.g. 'Focal (γ=2)'."""
        return self.label

    def acting(self, section: dict[str, Any]) -> set[str]:
        """The keys of `section` (a dumped mapping) that change what a run trains. Default:
        all of them when the method acts; a trick that is off: only its switch."""
        return set(section)

    def check(self, cfg: Any) -> None:
        """Cross-field rules on the whole config; raise ValueError naming the fix."""

    def lambda_factor(self, cfg: Any) -> float:
        """This method's factor on `lwr.lambda_max: auto` (the class-count rule), where it
        changes LWR's share of each classifier's gradient (K heads, a loss averaged over
        them); the resolve step multiplies the chosen methods' factors. 1: no change."""
        return 1.0

    # --- model -----------------------------------------------------------------------------
    def build_head(self, section: Any, in_features: int, num_classes: int) -> nn.Module | None:
        """A head of the method's own in place of the family's (None: keep the family's,
        which it builds linear or cosine as `model.head` says)."""
        return None

    def restructure(self, model: nn.Module, section: Any, model_cfg: Any) -> nn.Module:
        """A variant's change to the built network (after pretrained weights are loaded)."""
        return model

    def eval_structure(self, model: nn.Module, cfg: Any) -> nn.Module:
        """What every user of a checkpoint must rebuild beyond the model config (LWS's head)."""
        return model

    # --- run -------------------------------------------------------------------------------
    def check_start(self, cfg: Any, manifest: Any) -> None:
        """Before a run folder exists: what the config alone cannot know (a stage-2 recipe
        without its stage-1 checkpoint). Raise UserError."""

    def build_loss(self, section: Any, class_counts: torch.Tensor, seed: int) -> nn.Module:
        raise NotImplementedError(f"{self.name} is not a loss")

    def adapt_run_model(self, model: nn.Module, cfg: Any) -> nn.Module:
        """The model of a run once its starting weights are in (stage 2: a frozen backbone,
        LWS's head)."""
        return model

    def replace_parts(self, parts: Any, cfg: Any, device: Any) -> Any:
        """The run's parts after they are built (stage 2 on cached features)."""
        return parts

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        """Extend the run's parts; `saved` is the checkpoint a resumed run continues (its
        `extras` hold the tensors this method stored), None for a new run."""

    def train_loader(
        self, loader: Any, second: Callable[..., Any], cfg: Any, num_classes: int
    ) -> Any:
        """The training loader the loop draws from; `second(sampler=..., seed=..., views=...,
        drop_last=...)` builds another loader over the same training split (the config's
        sampler and seed where not given; `views` > 1: batches of V augmented views,
        (N, V, 3, H, W); `drop_last`: no last partial global batch)."""
        return loader


def register_method(method: Method) -> Method:
    """Add a method to the registry (built-ins in lwrcli.methods, plugins from their entry
    point). Its name must be new in its slot."""
    if getattr(method, "slot", None) not in SLOTS:
        raise ValueError(
            f"method slot must be one of {SLOTS}, got {getattr(method, 'slot', None)!r}"
        )
    for attr in ("name", "config", "label"):
        if not hasattr(method, attr):
            raise ValueError(f"method {type(method).__name__} does not set `{attr}`")
    if not (isinstance(method.config, type) and issubclass(method.config, Section)):
        raise ValueError(f"method {method.name}: `config` must be a Section subclass")
    if method.slot == "trick" and not method.key:
        raise ValueError(f"trick {method.name} needs `key`, its top-level config section")
    METHODS.register(f"{method.slot}:{method.name}", method)
    return method
