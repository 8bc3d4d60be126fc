"""What the contrastive losses share (PaCo and GPaCo: lwrcli.methods.paco; BCL:
lwrcli.methods.bcl): their config base, the network they train on, the training loader of
augmented views, the queue of past keys, their rules, and where LWR acts.

A contrastive loss is a `loss` method that also
- wraps the run's model in a ContrastiveNet (lwrcli.models.contrastive: a projection MLP on the
  head's input; BCL's prototype MLP on the classifier rows), for the run (`adapt_run_model`)
  and for every user of a checkpoint (`eval_structure`), whose forward on one image batch is
  the plain model's: eval, predict and export see the classifier's logits of one view;
- asks for a training loader of V augmented views per image (`train_loader`: build_data's
  `second(views=V)`, device-resident or worker DataLoader);
- reads the views' logits and embeddings the network kept for it (`ContrastiveNet.take`).

LWR acts on the classifier rows by default, as everywhere in lwr. `loss.lwr_on: prototypes`
(BCL only) makes it act on BCL's class prototypes normalize(MLP(W)) instead: the run's
`lwr_rows` hook (lwrcli.train.components) hands the engine those rows. PaCo's learnable class
centres are its classifier's rows (the authors' moco/builder.py: `self.linear`, whose logits
are the centre terms of the loss), so LWR on the classifier is LWR on the centres there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from lwrcli.checkpoint.files import EXTRA_PREFIX
from lwrcli.config.sections import LossSection
from lwrcli.errors import UserError
from lwrcli.methods.base import RunParts
from lwrcli.methods.losses import CountsLoss, LossMethod
from lwrcli.models.contrastive import ContrastiveNet, to_contrastive
from lwrcli.runtime.distributed import DistInfo, all_gather_cat


class ContrastiveSection(LossSection):
    """Settings every contrastive loss has: the projection's output size, its MLP, and what
    LWR acts on."""

    dim: int = Field(128, ge=2, le=8192, description="projection output size")
    # The projection MLP (lwrcli.models.contrastive): bn = Linear-BN-ReLU-Linear (PaCo, BCL),
    # relu2 = Linear-ReLU-Linear-ReLU-Linear (GPaCo).
    mlp: Literal["bn", "relu2"] = "bn"
    # What LWR repels when lwr.enabled: the classifier rows (PaCo's centres are those rows), or
    # BCL's prototypes normalize(MLP(W)) (docs/contrastive.md, "LWR on centres and prototypes").
    lwr_on: Literal["classifier", "prototypes"] = "classifier"


class FeatureQueue:
    """The last `size` key embeddings (float32, unit rows) and their labels: MoCo's queue,
    which PaCo and GPaCo contrast each anchor with.

    Keys of a step are `push`ed per micro-batch and enter the queue only after the optimizer
    step (`commit`, an after-step hook): every micro-batch of a step sees the same queue, and
    under torchrun the keys of every process are gathered first, in rank order (the authors'
    concat_all_gather), so the queue holds the global batch's keys in its global order whatever
    the number of processes or micro-batches. The queue starts empty and fills over the first
    size / global batch steps (the authors start it with random unit columns and random
    labels); `contents` gives only the filled rows. Its state travels in every checkpoint."""

    def __init__(self, size: int, dim: int, device: torch.device, dist: DistInfo | None = None):
        self.size, self.dim = int(size), int(dim)
        self.dist = dist or DistInfo()
        self.features = torch.zeros(self.size, self.dim, device=device)
        self.labels = torch.full((self.size,), -1, dtype=torch.int64, device=device)
        self.ptr = 0
        self.filled = 0
        self._pending: list[tuple[Tensor, Tensor]] = []

    def contents(self) -> tuple[Tensor, Tensor]:
        """(features (M, dim), labels (M,)) of the filled rows, M <= size."""
        return self.features[: self.filled], self.labels[: self.filled]

    def push(self, keys: Tensor, labels: Tensor) -> None:
        """Keys (B, dim) and labels (B,) of one micro-batch, queued at the step's end."""
        self._pending.append((keys.detach().float(), labels.detach()))

    @torch.no_grad()
    def commit(self) -> None:
        """Enqueue the step's keys (all processes', in rank order) over the oldest rows."""
        if not self._pending:
            return
        keys = torch.cat([k for k, _ in self._pending])
        labels = torch.cat([y for _, y in self._pending])
        self._pending.clear()
        keys, labels = all_gather_cat(keys, self.dist), all_gather_cat(labels, self.dist)
        if self.size == 0:
            return
        keys, labels = keys[-self.size :], labels[-self.size :]
        n = keys.shape[0]
        rows = (self.ptr + torch.arange(n, device=keys.device)) % self.size
        self.features[rows] = keys.to(self.features.dtype)
        self.labels[rows] = labels.to(self.labels.device)
        self.ptr = (self.ptr + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        return {
            prefix + "features": self.features,
            prefix + "labels": self.labels,
            prefix + "position": torch.tensor([self.ptr, self.filled], dtype=torch.int64),
        }

    def load(self, extras: dict[str, Tensor], prefix: str) -> None:
        features = extras[prefix + "features"]
        if tuple(features.shape) != (self.size, self.dim):
            raise UserError(
                f"The checkpoint's queue holds {tuple(features.shape)} keys, this run's "
                f"config asks for ({self.size}, {self.dim}): resume with the run's own config."
            )
        self.features.copy_(features)
        self.labels.copy_(extras[prefix + "labels"])
        self.ptr, self.filled = (int(v) for v in extras[prefix + "position"])


class ContrastiveLoss(CountsLoss):
    """Base of the contrastive losses: the network whose kept outputs `loss` reads (set by
    the method's attach; not a submodule, so the loss holds no copy of the weights)."""

    needs_model_outputs = True

    def __init__(self, class_counts: Any) -> None:
        super().__init__(class_counts)
        object.__setattr__(self, "network", None)

    def outputs(self) -> Any:
        network = self.network
        if network is None:
            raise RuntimeError("the contrastive loss has no network: the method's attach sets it")
        return network.take()


class ContrastiveMethod(LossMethod):
    """A contrastive loss as a method (module docstring). Subclasses set `views`, `joint`,
    `net_views` and `prototypes` (the network they train on) and their rules."""

    # Augmented views per image the loss compares, and how many go through the network.
    prototypes: bool = False
    joint: bool = False

    def views(self, section: Any) -> int:
        return 2

    def net_views(self, section: Any) -> int | None:
        return None

    # --- the network -----------------------------------------------------------------------
    def wrap(self, model: nn.Module, section: Any) -> ContrastiveNet:
        if isinstance(model, ContrastiveNet):
            return model
        return to_contrastive(
            model,
            section.mlp,
            section.dim,
            prototypes=self.prototypes,
            net_views=self.net_views(section),
            joint=self.joint,
        )

    def adapt_run_model(self, model: nn.Module, cfg: Any) -> nn.Module:
        return self.wrap(model, cfg.loss)

    def eval_structure(self, model: nn.Module, cfg: Any) -> nn.Module:
        return self.wrap(model, cfg.loss)

    def train_loader(
        self, loader: Any, second: Callable[..., Any], cfg: Any, num_classes: int
    ) -> Any:
        """The same split, sampler and seed, each image augmented `views` times; the last
        partial global batch left out, as the authors' loaders do (drop_last) and as a
        projection MLP's batch norm needs (a process's part of it can be one image)."""
        return second(views=self.views(cfg.loss), drop_last=True)

    def attach(self, parts: RunParts, cfg: Any, saved: Any) -> None:
        """The loss reads the network's kept outputs; LWR acts on the prototypes if asked."""
        model = parts.raw_model
        assert isinstance(model, ContrastiveNet), "adapt_run_model wraps the run's model"
        object.__setattr__(parts.loss, "network", model)
        if cfg.loss.lwr_on == "prototypes":
            parts.lwr_rows = model.prototypes  # type: ignore[attr-defined]

    # --- rules -----------------------------------------------------------------------------
    def check(self, cfg: Any) -> None:
        loss, model, name = cfg.loss, cfg.model, cfg.loss.name
        if model.variant.name != "plain":
            raise ValueError(
                f"loss.name={name} trains one network on augmented views of each image; "
                f"model.variant.name={model.variant.name} changes what a training batch is. "
                "Set model.variant.name=plain"
            )
        if model.tuning != "full":
            raise ValueError(
                f"loss.name={name} trains the whole network with its projection head: set "
                "model.tuning=full"
            )
        stage2 = cfg.section("stage2")
        if stage2.mode != "none" or stage2.cache_features:
            raise ValueError(
                f"loss.name={name} learns the representation itself (one stage): stage2.mode "
                "and stage2.cache_features do not apply to it"
            )
        if loss.reweight != "none":
            raise ValueError(
                f"loss.name={name} balances classes itself (logit-adjusted class terms); "
                f"loss.reweight={loss.reweight} is not part of the method: set "
                "loss.reweight=none"
            )
        if cfg.compile_mode == "reduce-overhead":
            raise ValueError(
                f"loss.name={name} keeps the network's embeddings of each step for the loss, "
                "which CUDA graphs (compile_mode=reduce-overhead) overwrite on the next call: "
                "use compile_mode=default"
            )
        if loss.lwr_on == "prototypes":
            self.check_prototypes(cfg)

    def check_prototypes(self, cfg: Any) -> None:
        name = cfg.loss.name
        if not self.prototypes:
            raise ValueError(
                f"loss.lwr_on=prototypes: {name} has no prototypes. Its learnable class centres "
                "are the classifier's rows (the authors' moco/builder.py: the centre logits are "
                "the linear classifier's), so LWR on the classifier (loss.lwr_on=classifier, "
                "the default) already acts on them"
            )
        if not cfg.lwr.enabled:
            raise ValueError(
                "loss.lwr_on=prototypes says where LWR acts, but lwr.enabled is false: set "
                "lwr.enabled=true, or leave loss.lwr_on=classifier"
            )
        if cfg.lwr.theta == "init":
            raise ValueError(
                "loss.lwr_on=prototypes with lwr.theta=init: the reference geometry is the "
                "classifier's at initialisation, not the prototypes'. Use a fixed lwr.theta "
                "(e.g. 0.4) or loss.lwr_on=classifier"
            )


def process_group() -> DistInfo:
    """This process's rank and world size when a process group is up (torchrun), else a world
    of one: where the queue gathers keys from."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def state_prefix(name: str) -> str:
    """Checkpoint key prefix of a contrastive method's run tensors: `lwr_state.<name>.`."""
    return f"{EXTRA_PREFIX}{name}."


def under(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose names start with `prefix`, named without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
