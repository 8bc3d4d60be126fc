"""Where tensors live and in which precision: the device a run uses and the autocast contexts.

One low room for what training, evaluation, losses and LWR all need, so none of them imports
another for it.
"""

from __future__ import annotations

import contextlib
import functools
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


# The instructions that make bf16 native on an x86 CPU (torch.cpu.get_capabilities' names
# and /proc/cpuinfo's flags alike), with the names the start-up line shows.
BF16_INSTRUCTIONS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}


@functools.lru_cache(maxsize=1)
def cpu_bf16_instructions() -> tuple[str, ...]:
    """The native bf16 instruction sets this CPU reports, e.g. ('AVX512-BF16',).

    Read from PyTorch's own CPU feature detection (cpuinfo's CPUID, any OS) where this torch
    has it (`torch.cpu.get_capabilities`), else from Linux's /proc/cpuinfo flags; () where
    neither can tell. Only x86's AVX512-BF16 and AMX-BF16 count: without them PyTorch emulates
    bf16 convolutions and matmuls, many times slower than fp32, and ARM's bf16 extensions are
    left out until measured (no false positive where bf16 would be slow)."""
    capabilities = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
            return tuple(name for key, name in BF16_INSTRUCTIONS.items() if found.get(key))
        except Exception:  # a failed detection means 'cannot tell', not a crash
            pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()  # not Linux: cannot tell
    flags = {w for line in text.splitlines() if line.startswith("flags") for w in line.split()}
    return tuple(name for key, name in BF16_INSTRUCTIONS.items() if key in flags)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_bf16_instructions())


def auto_amp(device: torch.device) -> tuple[str, str]:
    """What `amp: auto` means on `device`, and why: bf16 autocast on a CUDA GPU that supports
    bf16 and on a CPU with native bf16 instructions; none (fp32) elsewhere."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "amp auto chose bf16: the GPU supports it"
        return "none", "amp auto chose fp32: the GPU has no bf16"
    if device.type == "cpu" and cpu_bf16_native():
        found = " and ".join(cpu_bf16_instructions())
        return "bf16", (
            f"amp auto chose bf16: this CPU has native bf16 instructions ({found}); "
            "--set amp=none trains in fp32"
        )
    return "none", (
        "amp auto chose fp32: this CPU has no native bf16 instructions (AVX512-BF16 or "
        "AMX-BF16), where bf16 would be emulated, many times slower"
    )


def bf16_warning(device: torch.device, amp: str) -> str | None:
    """One start-up line when bf16 is asked for on a CPU that would emulate it."""
    if device.type != "cpu" or amp != "bf16" or cpu_bf16_native():
        return None
    return (
        "Warning: amp=bf16 on a CPU without bf16 instructions (no AVX512-BF16 or AMX-BF16 "
        "reported): PyTorch emulates bf16 here, many times slower than fp32 (ResNet-32: "
        "~8 against ~150 images/s). Use amp=auto (fp32 on this CPU) unless you need bf16 "
        "numerics."
    )


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """One autocast context for a whole loop; bf16 needs no loss scaler."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_amp(amp: str, device: torch.device) -> str:
    """Precision of `lwr eval` and of a run's own evaluations: the checkpoint's own (resolved
    at training) on CUDA, `auto` resolved as in training; fp32 on CPU whatever the checkpoint
    says, so a bf16 run's checkpoint evaluates on any CPU (one pass: fp32's cost is small, and
    it is exact), and a CPU run records the accuracies `lwr eval` gives for its checkpoint."""
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
