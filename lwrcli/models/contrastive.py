"""The network of the contrastive losses (lwrcli.methods.paco, lwrcli.methods.bcl): any model
with a classifier head, plus a projection MLP on the head's input, and for BCL an MLP that maps
the classifier's rows to class prototypes.

`ContrastiveNet` wraps the plain model as `net` (its head stays the classifier: the wrapper's
`lwr_head` is `net.<head>`), so evaluation, prediction and export run `net` on one image batch
and get its logits, as for any model. A training batch of augmented views (N, V, 3, H, W)
(lwrcli.data: `views` > 1) instead goes through `forward_views`: the first `net_views` views
through the network, each view's logits, and its head input h through the projector,
z = normalize(g(h)). It returns the first view's logits (N, C), what the training loop scores
and logs, and keeps the rest for the loss to `take()`: logits (N, V', C), embeddings (N, V', p),
the views it did not encode (PaCo's key view, encoded by the momentum copy) and BCL's class
prototypes of this step.

The head's input is captured by a forward pre-hook on the head itself (as lwrcli.methods.ib
does), so any family works without knowing where its features end. The hook is a bound method
of the wrapper: `copy.deepcopy` (PaCo's momentum encoder, the EMA trick) rebinds it to the copy.

MLPs as in the authors' code, read, not copied:
- `bn`: Linear(d, d) - BatchNorm1d - ReLU - Linear(d, p), PaCo's MoCo head with `mlp=True`
  (dvlab-research/Parametric-Contrastive-Learning, LT/moco/builder.py) and BCL's `head` and
  `head_fc` (FlamieZhu/Balanced-Contrastive-Learning, models/resnext.py);
- `relu2`: Linear(d, d) - ReLU - Linear(d, d) - ReLU - Linear(d, p), GPaCo's
  (GPaCo/LT/moco/builder.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwrcli.models.heads import get_classifier, head_path

MLP_KINDS = ("bn", "relu2")


def projection_mlp(kind: str, d: int, out: int) -> nn.Sequential:
    """The projection head g: R^d -> R^out of `kind` (module docstring)."""
    if kind == "bn":
        return nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, out))
    if kind == "relu2":
        return nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out)
        )
    raise ValueError(f"projection MLP kind must be one of {MLP_KINDS}, got {kind!r}")


@dataclass
class ViewsOutput:
    """What one training forward of views leaves for the loss."""

    logits: Tensor  # (N, V', C) of the views through the network
    embeddings: Tensor  # (N, V', p), unit rows
    rest: Tensor | None  # (N, V - V', 3, H, W): views left for another encoder, or None
    prototypes: Tensor | None = None  # (C, p) unit rows, BCL's, from this forward


class ContrastiveNet(nn.Module):
    """net + projection MLP (+ BCL's prototype MLP); see the module docstring.

    `net_views`: how many leading views go through the network (None: all); `joint`: one
    forward over the views concatenated (BCL: batch-norm statistics over all views) instead of
    one forward per view (PaCo, GPaCo)."""

    def __init__(
        self,
        net: nn.Module,
        projector: nn.Module,
        prototype_head: nn.Module | None = None,
        net_views: int | None = None,
        joint: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.projector = projector
        self.prototype_head = prototype_head
        self.lwr_head = f"net.{head_path(net)}"
        self.net_views, self.joint = net_views, joint
        self._capture = False
        self._head_input: Tensor | None = None
        self.last: ViewsOutput | None = None
        get_classifier(net).register_forward_pre_hook(self._keep_head_input)

    def _keep_head_input(self, module: nn.Module, args: tuple[object, ...]) -> None:
        if self._capture and isinstance(args[0], Tensor):
            self._head_input = args[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 5 and self.training:
            return self.forward_views(x)
        return self.net(x)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, 3, H, W) -> (logits (B, C), unit embeddings (B, p))."""
        self._capture = True
        try:
            logits = self.net(self._layout(x))
            h = self._head_input
        finally:
            self._capture, self._head_input = False, None
        if h is None:
            raise RuntimeError("the classifier head did not run: no features to project")
        return logits, F.normalize(self.projector(h.flatten(1)), dim=1)

    def forward_views(self, x: Tensor) -> Tensor:
        """(N, V, 3, H, W) -> the first view's logits (N, C); the rest in `last`."""
        n, v = x.shape[:2]
        used = v if self.net_views is None else min(self.net_views, v)
        if self.joint:  # view-major, as BCL's torch.cat([inputs[0], inputs[1], inputs[2]])
            flat = x[:, :used].transpose(0, 1).reshape(used * n, *x.shape[2:])
            logits, emb = self.encode(flat)
            logits = logits.view(used, n, -1).transpose(0, 1)
            emb = emb.view(used, n, -1).transpose(0, 1)
        else:
            pairs = [self.encode(x[:, i]) for i in range(used)]
            logits = torch.stack([p[0] for p in pairs], dim=1)
            emb = torch.stack([p[1] for p in pairs], dim=1)
        rest = x[:, used:] if used < v else None
        protos = self.prototypes() if self.prototype_head is not None else None
        self.last = ViewsOutput(logits, emb, rest, protos)
        return logits[:, 0]

    def take(self) -> ViewsOutput:
        """The last training forward's outputs, handed over and forgotten (no activation
        outlives its step)."""
        out, self.last = self.last, None
        if out is None:
            raise RuntimeError(
                "the contrastive loss needs a training batch of augmented views (N, V, 3, H, W) "
                "through ContrastiveNet; the training loader gives them (lwrcli.methods.paco/bcl "
                "ask for them through Method.train_loader)"
            )
        return out

    def prototypes(self) -> Tensor:
        """BCL's class prototypes, normalize(MLP(W)) for the classifier rows W (C, d): (C, p)."""
        if self.prototype_head is None:
            raise RuntimeError("this network has no prototype head")
        weight = get_classifier(self.net).weight
        return F.normalize(self.prototype_head(weight), dim=1)

    def _layout(self, x: Tensor) -> Tensor:
        """A view x[:, i] is strided; give it the memory format of the network's convolutions."""
        w = next((p for p in self.net.parameters() if p.dim() == 4), None)
        if w is not None and w.is_contiguous(memory_format=torch.channels_last):
            return x.contiguous(memory_format=torch.channels_last)
        return x


def to_contrastive(
    model: nn.Module,
    kind: str,
    dim: int,
    prototypes: bool = False,
    net_views: int | None = None,
    joint: bool = False,
) -> ContrastiveNet:
    """`model` wrapped with a projection MLP of `kind` to `dim` on its head's input (and, with
    `prototypes`, a prototype MLP of the same kind on its classifier rows), on the model's
    device and dtype. New layers draw from torch's global RNG (PyTorch's default init)."""
    weight = get_classifier(model).weight
    d = weight.shape[1]
    projector = projection_mlp(kind, d, dim).to(weight.device)
    proto = projection_mlp(kind, d, dim).to(weight.device) if prototypes else None
    return ContrastiveNet(model, projector, proto, net_views, joint)


class MomentumEncoder:
    """PaCo's key encoder (MoCo's): a copy of the network and projector, never trained, whose
    parameters follow the trained ones after every optimizer step,

        θ_k <- m θ_k + (1 - m) θ_q          (LT/moco/builder.py, _momentum_update_key_encoder)

    Its batch-norm buffers are its own: the copy runs in training mode on the key views, as
    the authors' key encoder does. Not an nn.Module of the run: the optimizer, DDP and the
    model's checkpoint tensors never see it; `state_tensors`/`load` carry it through resume."""

    def __init__(
        self,
        model: ContrastiveNet,
        momentum: float,
        autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.momentum = float(momentum)
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.train()
        self.module.last = None
        self.autocast = autocast
        self._pairs = list(zip(self.module.parameters(), model.parameters()))

    @torch.no_grad()
    def update(self) -> None:
        """One momentum step towards the trained parameters (after each optimizer step)."""
        keys = [k for k, _ in self._pairs]
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, [q.detach() for _, q in self._pairs], alpha=1.0 - self.momentum)

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Unit key embeddings (B, p) of images (B, 3, H, W), float32, without gradient."""
        with self.autocast():
            return self.module.encode(x)[1].float()

    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Every parameter and buffer of the copy (what resume must restore)."""
        yield from self.module.state_dict(keep_vars=False).items()

    def load(self, tensors: dict[str, Tensor]) -> None:
        """Restore the copy from `named_tensors`' names (missing or extra names: KeyError)."""
        own = self.module.state_dict()
        if set(own) != set(tensors):
            missing = sorted(set(own) - set(tensors))[:3]
            raise KeyError(f"momentum encoder tensors do not match the network: {missing}")
        with torch.no_grad():
            for key, value in tensors.items():
                own[key].copy_(value)
