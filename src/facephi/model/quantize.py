"""int8 weights for answering on the CPU (``--precision int8``).

The LLM's linear layers (the LM head included) get int8 weights and int8 dynamic activations:
PyTorch's dynamic quantisation (``torch.ao.quantization.quantize_dynamic``, fbgemm / x86 kernels),
applied to the answering copy of the LLM only (training and the plain reference stay float32).
Measured on 24 FER+ Test faces with the shipped model (one loaded 2-core machine): the most
probable class agrees with float32's for 19 of 24 faces and no answer is word for word float32's
(per-tensor activation scales do not keep this 135M model; per-channel weights: 13/24; the LM head
and ``down_proj`` left in float32: 21/24; the shared prefix run in float32: 16/24), so float32
stays the default. torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` was also tried: in
eager mode on this CPU it was slower than float32 (no fused int8 kernel without ``torch.compile``),
as is ``torch._int_mm`` on the CPU. No int8 scheme could be the default: simulated on 150 FER+ Test
and 150 web-dev faces (``benchmarks/results/int8_accuracy.md``), even weight-only int8 with a scale
per output channel keeps float32's class for only 96 % / 93 % of faces (W8A8 per token 91 % / 85 %),
below issue 21's 99 %: 4-8 % of faces are decided by less than 0.1 nats.
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
