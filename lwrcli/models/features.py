"""What a classifier head receives: the features of a batch, whatever the backbone."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lwrcli.models.heads import get_classifier, get_classifiers
from lwrcli.runtime.device import autocast_context


def head_inputs(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], amp: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(features (B, d) float32, labels (B,)) per batch: what the head receives, captured by
    a hook, so any backbone works without knowing where its features end. no_grad, not
    inference_mode: cached features later enter autograd as a trained head's inputs. Batches
    of K crops (B, K, 3, S, S) give features (B, K, d)."""
    head = get_classifier(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda m, args: captured.append(args[0].float()))
    out = []
    model.eval()
    try:
        for x, y in batches:
            crops = x.shape[1] if x.dim() == 5 else 0
            with autocast_context(x.device, amp):
                model(x.flatten(0, 1) if crops else x)
            f = captured.pop()
            # Test-time-ensemble crops: (B, K, d), the head's logits averaged later.
            out.append((f.view(x.shape[0], crops, -1) if crops else f, y))
    finally:
        hook.remove()
    return out


def heads_inputs(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], amp: str
) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """`head_inputs` for a model with several classifier heads (experts): per batch, the list
    of every head's input features (B, d_k) float32 (or (B, K, d_k) of test-time crops) and
    the labels, captured in one forward."""
    heads = get_classifiers(model)
    captured: list[list[torch.Tensor]] = [[] for _ in heads]
    hooks = [
        head.register_forward_pre_hook(lambda m, args, k=k: captured[k].append(args[0].float()))
        for k, head in enumerate(heads)
    ]
    out = []
    model.eval()
    try:
        for x, y in batches:
            crops = x.shape[1] if x.dim() == 5 else 0
            with autocast_context(x.device, amp):
                model(x.flatten(0, 1) if crops else x)
            feats = [c.pop() for c in captured]
            if crops:
                feats = [f.view(x.shape[0], crops, -1) for f in feats]
            out.append((feats, y))
    finally:
        for hook in hooks:
            hook.remove()
    return out
