"""Where tensors live and in which precision: the device a run uses and the autocast contexts.

One low room for what training, evaluation, losses and LWR all need, so none of them imports
another for it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from lwrcli.errors import UserError


def resolve_device(kind: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' -> a torch.device; under torchrun, the process's local GPU."""
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for, but no CUDA GPU is available here.")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without them PyTorch
    emulates bf16 matmuls and convolutions, many times slower than fp32."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    if "AMX" in str(capability).upper():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # not Linux: cannot tell; the warning names the check
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_warning(device: torch.device, amp: str) -> str | None:
    """One start-up line when bf16 is asked for on a CPU that would emulate it."""
    if device.type != "cpu" or amp != "bf16" or cpu_bf16_native():
        return None
    return (
        "Warning: amp=bf16 on a CPU without bf16 instructions (no AVX512-BF16 or AMX in "
        "/proc/cpuinfo): PyTorch emulates bf16 here, many times slower than fp32 (ResNet-32: "
        "~8 against ~150 images/s). Use amp=auto (fp32 on CPU) unless you need bf16 numerics."
    )


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """One autocast context for a whole loop; bf16 needs no loss scaler."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_amp(amp: str, device: torch.device) -> str:
    """Precision of `lwr eval`: the checkpoint's own (resolved at training) on CUDA, `auto`
    resolved as in training; fp32 on CPU whatever the checkpoint says, so a bf16 GPU run's
    checkpoint evaluates on any CPU (one pass: fp32's cost is small, and it is exact)."""
    if device.type != "cuda":
        return "none"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    return amp


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast off: losses and LWR similarities stay in float32 inside a bf16 step (bf16
    cosines are off by ~1e-2, as large as the θ steps of the paper's ablation)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
