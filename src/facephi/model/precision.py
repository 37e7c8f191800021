"""Inference precision: the number type the LLM and the projector compute in when a model answers.

``float32`` (the default everywhere) is what training and ``facephi eval`` use: the reported
figures, the same numbers on every machine. ``bfloat16`` halves the weights read per token and, on
CPUs with native bfloat16 arithmetic (x86 ``avx512_bf16`` / AMX) or a GPU that has it, scores
faster (``benchmarks/results/predict_latency.md`` measures by how much, and how often the answers
then differ from float32's). ``auto`` picks ``bfloat16`` where the hardware has it and ``float32``
elsewhere. ``int8`` (CPU only) answers through a copy of the LLM with int8 linear layers
(``model/quantize.py``). The landmark encoder always stays in float32 (it is small; BatchNorm stays exact).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from facephi.utils.errors import FacePhiError

PRECISIONS = ("auto", "float32", "bfloat16", "int8")
"""Choices of ``--precision`` (``facephi predict``, ``facephi serve``, ``facephi eval``)."""

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs with native bfloat16 arithmetic."""


@lru_cache(maxsize=1)
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU reports native bfloat16 arithmetic (Linux ``/proc/cpuinfo`` flags; False
    where that file is missing, e.g. macOS or Windows)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_device(name: Any, what: str = "device (--device)") -> Any:
    """``auto`` (or None) → CUDA when available, else the CPU; a name as torch spells it (``cpu``,
    ``cuda:1``) or a ``torch.device`` as given. ``what`` names the setting in the error messages."""
    import torch

    if isinstance(name, torch.device):
        device = name
    elif name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise FacePhiError(f"{what} {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FacePhiError(f"{what} {name}: CUDA is not available on this machine")
    return device


def module_device(module: Any) -> Any:
    """The device of ``module``'s first parameter (the CPU for a module without parameters)."""
    import torch

    return next(iter(module.parameters()), torch.empty(0)).device


def resolve_precision(name: str, device: Any) -> str:
    """``name`` (one of :data:`PRECISIONS`) for ``device`` → ``"float32"``, ``"bfloat16"`` or ``"int8"``
    (CPU only)."""
    import torch

    if name not in PRECISIONS:
        raise FacePhiError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    device = torch.device(device)
    if name == "int8" and device.type != "cpu":
        raise FacePhiError(f"precision int8: int8 weights run on the CPU only, not on {device} (use bfloat16)")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return "float32"
