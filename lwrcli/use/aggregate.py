"""Scoring a multi-expert checkpoint: every expert and their aggregate, uniform or learnt by
SADE's test-time self-supervised aggregation (`lwr eval CKPT --aggregate tsa`).

A model with K classifier heads (lwrcli.models.experts) is scored from one forward per batch
that captures every head's input (lwrcli.models.features.heads_inputs), so the post-hoc rules
apply per expert: τ-norm normalises each expert's classifier, the experts' logits are
aggregated, then post-hoc logit adjustment z - τ log π applies to the aggregate. Each expert
is also scored alone with the same adjustments (`experts` in summary.json).

Aggregation: uniform, the mean of the experts' logits (what the model outputs), or TSA. TSA
(Zhang et al., NeurIPS 2022; Vanint/SADE-AgnosticLT test_training_cifar.py / _imagenet.py,
configs/test_time_*_sade.json) learns weights w = softmax(a) over the experts on the unlabelled
test images: for two augmented views of each image it maximises the cosine similarity of the
two views' softmax(Σ_k w_k z_k), with SGD (lr 0.1 on CIFAR, 0.025 on ImageNet-LT; momentum
0.9, Nesterov, weight decay 5e-4; batches of 128; 5 epochs, stopping after an epoch that
leaves an expert below 0.05), a = 1/K at the start. The views here are the training crop (a
random offset in the image zero-padded by p: the recipe's crop padding for small images, an
eighth of the side for large ones) and a random horizontal flip of each test image; the
authors' views add colour jitter, grayscale and blur, and their loader shuffles the images
(here: the split's order, new views each epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lwrcli.data.device_loader import random_crop_flip
from lwrcli.errors import UserError
from lwrcli.methods.losses import posthoc_logit_adjust
from lwrcli.models.experts import aggregate_logits
from lwrcli.models.features import head_inputs, heads_inputs
from lwrcli.models.heads import get_classifiers
from lwrcli.train.metrics import summarize
from lwrcli.use.posthoc import TAU_GRID, Adjustment, Search, crop_logits, search_posthoc, top1

AGGREGATES = ("uniform", "tsa")


@dataclass(frozen=True)
class TSAOptions:
    """TSA's settings: the authors' test-time configs (epochs, lr) and script (the rest)."""

    epochs: int = 5
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    stop_below: float = 0.05
    seed: int = 0


@dataclass
class TSAResult:
    """The learnt weights (softmax of the parameter), the epochs run and the weights after
    each epoch."""

    weights: list[float]
    epochs_run: int
    history: list[list[float]] = field(default_factory=list)

    def record(self, options: TSAOptions, split: str, views: str) -> dict[str, Any]:
        return {
            "rule": "tsa",
            "weights": self.weights,
            "learnt_on": f"{split} (its images, no labels)",
            "epochs_run": self.epochs_run,
            "history": self.history,
            "views": views,
            "lr": options.lr,
            "epochs": options.epochs,
            "momentum": options.momentum,
            "weight_decay": options.weight_decay,
            "batch_size": options.batch_size,
        }


def tsa_weights(
    view_pairs: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    k: int,
    options: TSAOptions = TSAOptions(),
) -> TSAResult:
    """SADE's test-time aggregation on expert logits of view pairs: `view_pairs(epoch)` yields
    (z_view1, z_view2), each (B, K, C). Returns softmax(a) after the last epoch run."""
    param: Tensor | None = None
    opt: torch.optim.Optimizer | None = None
    history: list[list[float]] = []
    for epoch in range(options.epochs):
        for z0, z1 in view_pairs(epoch):
            if param is None:
                param = torch.full((k,), 1.0 / k, dtype=z0.dtype, device=z0.device)
                param.requires_grad_(True)
                opt = torch.optim.SGD(
                    [param],
                    lr=options.lr,
                    momentum=options.momentum,
                    weight_decay=options.weight_decay,
                    nesterov=options.momentum > 0,
                )
            assert opt is not None
            w = F.softmax(param, dim=0)
            p0 = F.softmax(aggregate_logits(z0, w), dim=1)
            p1 = F.softmax(aggregate_logits(z1, w), dim=1)
            loss = -F.cosine_similarity(p0, p1, dim=1, eps=1e-6).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if param is None:
            raise UserError("--aggregate tsa found no test images to learn the weights on.")
        history.append(F.softmax(param.detach(), dim=0).cpu().tolist())
        if min(history[-1]) < options.stop_below:
            break
    return TSAResult(history[-1], len(history), history)


def _expert_logits_of(model: nn.Module, heads: list[nn.Module], x: Tensor, amp: str) -> Tensor:
    feats = heads_inputs(model, [(x, x.new_zeros(0))], amp)[0][0]
    return torch.stack([head(f).float() for head, f in zip(heads, feats)], dim=1)


def view_padding(image_size: int, storage: str, crop_padding: int) -> int:
    """The views' crop padding: the recipe's for small images, an eighth of the side else."""
    return crop_padding if storage == "arrays" else max(1, image_size // 8)


def learn_aggregation(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], amp: str, padding: int,
    options: TSAOptions = TSAOptions(),
) -> TSAResult:  # fmt: skip
    """TSA on the images of `loader` (their labels are never read)."""
    heads = get_classifiers(model)
    generators: dict[torch.device, torch.Generator] = {}

    def pairs(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        for x, _ in loader:
            if x.dim() != 4:
                raise UserError("--aggregate tsa takes one image per sample, not --tte crops.")
            gen = generators.get(x.device)
            if gen is None:
                gen = generators[x.device] = torch.Generator(device=x.device)
                gen.manual_seed(options.seed)
            with torch.no_grad():
                z = [
                    _expert_logits_of(model, heads, random_crop_flip(x, padding, True, gen), amp)
                    for _ in range(2)
                ]
            for i in range(0, x.shape[0], options.batch_size):
                yield z[0][i : i + options.batch_size], z[1][i : i + options.batch_size]

    return tsa_weights(pairs, len(heads), options)


def expert_logits(
    heads: Sequence[nn.Module],
    features: Sequence[Tensor],
    tau_norm: float | None = None,
    keep_bias: bool = False,
) -> Tensor:
    """(N, K, C) on the CPU: each head on its own features (N, d_k) or crops (N, crops, d_k),
    its classifier τ-normalised when asked."""
    return torch.stack(
        [crop_logits(h, f, tau_norm, keep_bias).cpu() for h, f in zip(heads, features)], dim=1
    )


def _posthoc(logits: Tensor, counts: Sequence[int], tau: float | None) -> Tensor:
    if tau is None:
        return logits
    return posthoc_logit_adjust(logits, torch.tensor(list(counts), dtype=torch.float64), tau)


def model_logits(
    model: nn.Module,
    heads: Sequence[nn.Module],
    x: Tensor,
    adjustment: Adjustment,
    counts: Sequence[int],
    amp: str,
) -> Tensor:
    """Adjusted logits (N, C) on the CPU of a batch x, for `lwr predict`: one head as
    `Adjustment.logits` gives them; K heads: τ-norm per expert, the mean, then post-hoc."""
    if len(heads) == 1:
        feats = head_inputs(model, [(x, x.new_zeros(0))], amp)[0][0]
        return adjustment.logits(heads[0], feats, counts)
    feats = heads_inputs(model, [(x, x.new_zeros(0))], amp)[0][0]
    z = expert_logits(heads, feats, adjustment.tau_norm, adjustment.keep_bias)
    return _posthoc(aggregate_logits(z), counts, adjustment.posthoc_tau)


@dataclass
class Scored:
    """What `score_experts` hands back to `lwr eval`."""

    logits: Tensor
    targets: Tensor
    adjustment: Adjustment
    searches: dict[str, Any]
    picked_on: dict[str, str]
    record: dict[str, Any]


def _features(model: nn.Module, loader: Any, amp: str) -> tuple[list[Tensor], Tensor]:
    batches = heads_inputs(model, loader, amp)
    k = len(batches[0][0]) if batches else 0
    feats = [torch.cat([b[0][i] for b in batches]) for i in range(k)]
    return feats, torch.cat([y for _, y in batches]).cpu()


def score_experts(
    model: nn.Module,
    evals: dict[str, Any],
    split: str,
    val: str | None,
    amp: str,
    counts: Sequence[int],
    asked: Adjustment,
    searched: frozenset[str],
    weights: Tensor | None = None,
) -> Scored:
    """Aggregate and per-expert logits of `split` with the adjustments asked (τ picked on
    `val` where `searched`), the experts aggregated by `weights` (None: uniform)."""
    heads = get_classifiers(model)
    splits = [split] + ([val] if searched and val is not None and val != split else [])
    feats = {s: _features(model, evals[s], amp) for s in splits}
    tau_norm, posthoc_tau, keep_bias = asked.tau_norm, asked.posthoc_tau, asked.keep_bias
    searches: dict[str, Any] = {}
    picked_on: dict[str, str] = {}
    with torch.no_grad():
        if "tau_norm" in searched and val is not None:
            vf, vy = feats[val]
            scores = [
                top1(aggregate_logits(expert_logits(heads, vf, t, keep_bias), weights), vy)
                for t in TAU_GRID
            ]
            found = Search(list(TAU_GRID), scores)
            tau_norm, searches["tau_norm"] = found.tau, found.record(val)
            picked_on["tau_norm"] = val
        if "posthoc_tau" in searched and val is not None:
            vf, vy = feats[val]
            normed = aggregate_logits(expert_logits(heads, vf, tau_norm, keep_bias), weights)
            found = search_posthoc(normed, vy, list(counts))
            posthoc_tau = found.tau
            searches["posthoc_tau"], picked_on["posthoc_tau"] = found.record(val), val
        z = expert_logits(heads, feats[split][0], tau_norm, keep_bias)
        logits = _posthoc(aggregate_logits(z, weights), counts, posthoc_tau)
        targets = feats[split][1]
        experts = []
        for k in range(z.shape[1]):
            s = summarize(_posthoc(z[:, k], counts, posthoc_tau), targets, counts)
            experts.append({"expert": k + 1, **{g: s[g] for g in EXPERT_KEYS}})
    adjustment = Adjustment(tau_norm, posthoc_tau, keep_bias)
    return Scored(logits, targets, adjustment, searches, picked_on, {"experts": experts})


EXPERT_KEYS = ("top1", "top5", "many", "medium", "few")


def experts_lines(summary: dict[str, Any]) -> list[str]:
    """What `lwr eval` prints under its table for a multi-expert checkpoint."""
    lines = []
    agg = summary.get("aggregation")
    if agg:
        weights = ", ".join(f"expert {i} {w:.3f}" for i, w in enumerate(agg["weights"], 1))
        how = (
            f"TSA on {agg['learnt_on']}, {agg['epochs_run']} epoch(s)"
            if agg["rule"] == "tsa"
            else "uniform (the mean of the experts' logits)"
        )
        lines.append(f"Aggregation weights: {weights} ({how}).")
    for e in summary.get("experts", []):

        def pct(v: float | None) -> str:
            return "–" if v is None else f"{v:.2f}"

        lines.append(
            f"  expert {e['expert']}: top-1 {pct(e['top1'])}, many {pct(e['many'])}, "
            f"medium {pct(e['medium'])}, few {pct(e['few'])}"
        )
    return lines
