"""Lightweight fine-tuning of a pretrained transformer (`model.tuning`; LIFT compares these).

`full` trains everything. Every other method freezes the pretrained base (requires_grad False,
its dropout pinned off) and trains the head plus:

- `head`: nothing else (linear probing of a frozen tower);
- `bitfit`: every bias of the base (BitFit);
- `layernorm`: the LayerNorm weights and biases of the base;
- `lora`: LoRA through `peft` (rank r, alpha = r, so the update is B A x unscaled);
- `adapter`: a bottleneck adapter after each block's MLP, residual: y + f(y);
- `adaptformer`: AdaptFormer as LIFT builds it, a branch beside each block's MLP fed by the
  block's residual stream x: mlp(LN₂(x)) + s·f(x) with a learnable scalar s (starts at 1);
  f(x) = up(relu(down(LN(x)))) with the adapter's own LayerNorm (LIFT's modules);
- `vpt`: deep visual prompt tuning, r learnable tokens inserted after the class token before
  every block and dropped after it.

Width r (bottleneck, LoRA rank, prompt tokens): `model.tuning_dim`, else LIFT's rule, the
largest power of two <= C / (2 * blocks), at least 1. Adapters start as the identity (the
up-projection is zero), so a tuned model starts exactly where the pretrained one is.

Where LoRA goes: timm ViTs keep attention in Linear layers (`attn.qkv`, `attn.proj`), which
LoRA targets. open_clip and torchvision ViTs use `nn.MultiheadAttention`; peft's LoRA for it
merges the update into the frozen weights before every forward and subtracts it afterwards, so
the frozen tensors drift by rounding and are re-registered as new Parameters each step. There
LoRA targets the MLP's two Linear layers instead (LIFT's `lora_mlp`), which keeps the base bit
for bit.

The tower's blocks are found for open_clip (`visual.transformer.resblocks`), timm
(`blocks`) and torchvision (`encoder.layers`) ViTs; other models support head, bitfit and
layernorm only. After `apply_tuning` the model records `lwr_tuning` (the method) and
`lwr_tuned` (state-dict keys outside the head that train), which checkpoints use to store only
what the base does not hold.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lwrcli.config import ModelConfig
from lwrcli.errors import UserError, did_you_mean
from lwrcli.models.heads import head_path
from lwrcli.registry import load_plugins

TOWER_METHODS = ("lora", "adapter", "adaptformer", "vpt")  # these need the list of blocks
BUILTIN_TUNINGS = ("full", "head", "bitfit", "layernorm", *TOWER_METHODS)
# Tuning methods from plugins: name -> add(model, num_classes, tuning_dim), which adds the
# method's modules; their parameters and the head train, the rest of the base is frozen.
PLUGIN_TUNINGS: dict[str, Callable[[nn.Module, int, int | None], None]] = {}


def register_tuning(name: str, add: Callable[[nn.Module, int, int | None], None]) -> None:
    """A tuning method from a plugin (lwrcli.registry.load_plugins): `model.tuning: NAME`."""
    if name in BUILTIN_TUNINGS or name in PLUGIN_TUNINGS:
        raise ValueError(f"tuning method '{name}' is already registered")
    PLUGIN_TUNINGS[name] = add


def tuning_names() -> list[str]:
    load_plugins()
    return [*BUILTIN_TUNINGS, *PLUGIN_TUNINGS]


def check_tuning(name: str) -> None:
    """UserError unless `name` is a tuning method (built-in or from a plugin)."""
    names = tuning_names()
    if name not in names:
        raise UserError(
            f"model.tuning={name!r} is not a tuning method.{did_you_mean(name, names)} "
            f"Choices: {', '.join(names)}."
        )


def bottleneck_width(num_classes: int, blocks: int) -> int:
    """LIFT's rule: the largest power of two <= C / (2 * blocks), at least 1."""
    ratio = num_classes // (2 * blocks)  # floor; a power of two <= x is <= floor(x)
    return 1 if ratio < 1 else 1 << (ratio.bit_length() - 1)


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """(dotted path of the block list, the blocks) of a ViT image tower; UserError otherwise.
    Each block has `mlp`: open_clip `visual.transformer.resblocks`, timm `blocks`,
    torchvision `encoder.layers`."""
    for path in ("visual.transformer.resblocks", "blocks", "encoder.layers"):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        children = list(blocks.children())
        if children and all(hasattr(b, "mlp") for b in children):
            return path, children
    raise UserError(
        f"model.tuning={'/'.join(TOWER_METHODS)} adds modules to the blocks of a Vision "
        f"Transformer: open_clip ViTs (clip:<arch>), timm ViTs (timm:vit_*, deit_*, ...) and "
        f"torchvision ViTs (torchvision:vit_*). {type(model).__name__} has no such blocks; use "
        "model.tuning=head, bitfit, layernorm or full."
    )


def block_width(block: nn.Module) -> int:
    """Token width d of a block (its first LayerNorm's size)."""
    for m in block.modules():
        if isinstance(m, nn.LayerNorm):
            return int(m.normalized_shape[0])
    raise UserError(f"Cannot tell the token width of a {type(block).__name__} (no LayerNorm).")


class Bottleneck(nn.Module):
    """LIFT's adapter branch: (..., d) -> up(relu(down(LN(x)))) [* s], with its own LayerNorm
    and, for AdaptFormer, a learnable scalar scale s (initialised to 1): 2 d r + r + 3 d
    parameters (+ 1 for s). The up-projection starts at zero, so the branch adds nothing until
    it has trained."""

    def __init__(self, dim: int, width: int, learnable_scale: bool = False) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, width)
        self.up = nn.Linear(width, dim)
        self.scale = nn.Parameter(torch.ones(1)) if learnable_scale else None
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))  # LIFT's init
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.stream: torch.Tensor | None = None  # AdaptFormer: the block's residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(torch.relu(self.down(self.ln(x))))
        return out * self.scale if self.scale is not None else out


class Prompts(nn.Module):
    """Deep VPT for one block: `tokens` (r, d), inserted after the class token of the block's
    input (B, N, d) -> (B, 1 + r + N - 1, d) and removed from its output."""

    def __init__(self, count: int, dim: int, patch_area: int, batch_first: bool = True) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(count, dim))
        bound = math.sqrt(6.0 / float(3 * patch_area + dim))  # VPT's (and LIFT's) init
        nn.init.uniform_(self.tokens, -bound, bound)
        self.seq_dim = 1 if batch_first else 0

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        if self.seq_dim == 1:
            tokens = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        else:  # (N, B, d)
            tokens = self.tokens.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)
        n = x.shape[self.seq_dim]
        first, rest = x.narrow(self.seq_dim, 0, 1), x.narrow(self.seq_dim, 1, n - 1)
        return torch.cat([first, tokens, rest], dim=self.seq_dim)

    def remove(self, x: torch.Tensor) -> torch.Tensor:
        r = self.tokens.shape[0]
        n = x.shape[self.seq_dim]
        return torch.cat(
            [x.narrow(self.seq_dim, 0, 1), x.narrow(self.seq_dim, 1 + r, n - 1 - r)],
            dim=self.seq_dim,
        )


def _mlp_norm(block: nn.Module) -> nn.Module:
    """The LayerNorm in front of a block's MLP (open_clip/torchvision `ln_2`, timm `norm2`)."""
    for name in ("ln_2", "norm2"):
        norm = getattr(block, name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise UserError(f"Cannot find the LayerNorm before the MLP of a {type(block).__name__}.")


def _add_adapters(blocks: list[nn.Module], width: int, parallel: bool) -> None:
    """A Bottleneck per block as `block.lwr_adapter`, wired by forward hooks (the base's
    modules and state-dict keys stay as they are). AdaptFormer (LIFT's): beside the MLP, from
    the residual stream x that enters the block's second LayerNorm: mlp(LN₂(x)) + s·f(x).
    Adapter: after the MLP, residual: y + f(y)."""
    for block in blocks:
        adapter = Bottleneck(block_width(block), width, learnable_scale=parallel)
        block.lwr_adapter = adapter
        if parallel:

            def keep_stream(
                norm: nn.Module, args: tuple[Any, ...], a: Bottleneck = adapter
            ) -> None:
                a.stream = args[0]

            _mlp_norm(block).register_forward_pre_hook(keep_stream)

        def hook(
            mlp: nn.Module, args: tuple[Any, ...], out: torch.Tensor, a: Bottleneck = adapter
        ) -> torch.Tensor:
            if parallel:
                stream, a.stream = a.stream, None
                return out + a(stream)
            return out + a(out)

        block.mlp.register_forward_hook(hook)


def _patch_area(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            return int(kh * kw)
    return 1


def _add_prompts(model: nn.Module, path: str, blocks: list[nn.Module], count: int) -> None:
    """Deep VPT: a Prompts module per block as `block.lwr_prompts`, inserted by a forward
    pre-hook and removed by a forward hook."""
    container = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    batch_first = bool(getattr(container, "batch_first", True))
    area = _patch_area(model)
    for block in blocks:
        prompts = Prompts(count, block_width(block), area, batch_first)
        block.lwr_prompts = prompts

        def before(
            mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], p: Prompts = prompts
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return (p.insert(args[0]), *args[1:]), kwargs

        def after(
            mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor, p: Prompts = prompts
        ) -> torch.Tensor:
            return p.remove(out)

        block.register_forward_pre_hook(before, with_kwargs=True)
        block.register_forward_hook(after)


def _lora_targets(model: nn.Module, blocks: list[nn.Module]) -> list[str]:
    """Full module names of the Linear layers LoRA adapts (see the module docstring)."""
    name_of = {id(m): n for n, m in model.named_modules()}
    names: list[str] = []
    for block in blocks:
        attn = getattr(block, "attn", None)
        owner = attn if isinstance(getattr(attn, "qkv", None), nn.Linear) else block.mlp
        names += [name_of[id(m)] for m in owner.modules() if isinstance(m, nn.Linear)]
    return names


def _add_lora(model: nn.Module, blocks: list[nn.Module], rank: int) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UserError(
            "model.tuning=lora uses the peft library: pip install 'lwrcli[clip]' (or peft)."
        ) from None
    config = LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=_lora_targets(model, blocks)
    )
    inject_adapter_in_model(config, model)


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _pin_dropout_off(model: nn.Module, head: str) -> None:
    """Dropout / drop-path of the frozen base stays in eval mode whatever model.train() says
    (a frozen network is used as it was pretrained; the head's modules are left alone)."""
    for name, m in model.named_modules():
        if name == head or name.startswith(head + "."):
            continue
        if "drop" in type(m).__name__.lower():
            m.train = types.MethodType(_eval_only, m)  # type: ignore[method-assign]
            m.eval()


def _norm_param_names(model: nn.Module) -> set[str]:
    return {
        f"{mname}.{pname}" if mname else pname
        for mname, m in model.named_modules()
        if isinstance(m, nn.LayerNorm)
        for pname, _ in m.named_parameters(recurse=False)
    }


def apply_tuning(model: nn.Module, cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Add the method's modules to `model` and freeze everything else but the head.
    Returns the model (changed in place); records `lwr_tuning` and `lwr_tuned` on it."""
    method = cfg.tuning
    model.lwr_tuning = method
    if method == "full":
        model.lwr_tuned = None  # everything trains; checkpoints hold the whole model
        return model
    head = head_path(model)
    # By identity: peft renames the Linears it wraps (c_fc.weight -> c_fc.base_layer.weight)
    # and freezes everything else; model.freeze may have frozen some parameters already.
    before = {id(p): p.requires_grad for p in model.parameters()}
    if method in TOWER_METHODS:
        path, blocks = find_blocks(model)
        width = cfg.tuning_dim or bottleneck_width(num_classes, len(blocks))
        add: dict[str, Callable[[], None]] = {
            "adapter": lambda: _add_adapters(blocks, width, parallel=False),
            "adaptformer": lambda: _add_adapters(blocks, width, parallel=True),
            "vpt": lambda: _add_prompts(model, path, blocks, width),
            "lora": lambda: _add_lora(model, blocks, width),
        }
        add[method]()
        model.lwr_tuning_dim = width
    elif method in PLUGIN_TUNINGS:
        PLUGIN_TUNINGS[method](model, num_classes, cfg.tuning_dim)
    added = {n for n, p in model.named_parameters() if id(p) not in before}
    norms = _norm_param_names(model) if method == "layernorm" else set()
    for name, p in model.named_parameters():
        trains = (
            name.startswith(head + ".")
            or name in added
            or (method == "bitfit" and name.rsplit(".", 1)[-1].endswith("bias"))
            or name in norms
        )
        p.requires_grad_(trains and before.get(id(p), True))
    _pin_dropout_off(model, head)
    model.lwr_tuned = tuple(
        n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(head + ".")
    )
    return model


def count_trainable(model: nn.Module) -> int:
    """Elements of the parameters that train (requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
