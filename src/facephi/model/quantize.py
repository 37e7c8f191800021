"""int8 weights for answering on the CPU (``--precision int8``).

The LLM's linear layers (the LM head included) get int8 weights and int8 dynamic activations:
PyTorch's dynamic quantisation (``torch.ao.quantization.quantize_dynamic``, fbgemm / x86 kernels),
applied to the answering copy of the LLM only (training and the plain reference stay float32).
``benchmarks/results/predict_latency.md`` records what it gains and how often the class then differs
from float32's; torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` was measured too and is far
slower in eager mode on this CPU (no fused int8 kernel without ``torch.compile``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from facephi.utils.errors import FacePhiError


def int8_supported() -> bool:
    """Whether this PyTorch build has an int8 CPU engine (fbgemm / x86 / qnnpack)."""
    return any(engine in torch.backends.quantized.supported_engines for engine in ("x86", "fbgemm", "qnnpack"))


def quantize_int8(llm: Any) -> Any:
    """``llm`` (float32, on the CPU, not needed for training any more) with int8 linear layers, in place."""
    if not int8_supported():
        raise FacePhiError("precision int8: this PyTorch build has no int8 CPU engine (fbgemm / x86 / qnnpack)")
    if next(llm.parameters()).device.type != "cpu":
        raise FacePhiError("precision int8: int8 weights run on the CPU only (use bfloat16 on a GPU)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torch.ao.quantization deprecation notice
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(llm.float(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
