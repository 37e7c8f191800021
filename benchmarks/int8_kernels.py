"""Linear-layer kernels for int8 weights on this CPU, at SmolLM2-135M's shapes (issue 21's int8 lever).

    python benchmarks/int8_kernels.py --threads 2 --out benchmarks/results/int8_kernels.md

Times ``x @ W.T`` for M tokens (1, 20, 60) and the model's weight shapes (576 → 1536 gate/up,
1536 → 576 down, 576 → 576 q/o, 576 → 49152 LM head), p50 of ``--reps`` calls after 3 warm-ups:
float32 ``F.linear``; bfloat16 ``F.linear``; ``torch._weight_int8pack_mm`` (int8 weights with a
scale per output channel, activations float: the weight-only int8 kernel) with float32 and with
bfloat16 activations; and PyTorch's dynamic int8 linear (int8 weights and activations, what
``--precision int8`` uses). Kernels only: the weights here sit in the CPU's caches, so the
figures show arithmetic speed, not the weight reads of a whole model's forward.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

SHAPES = {"gate/up 576→1536": (1536, 576), "down 1536→576": (576, 1536), "q/o 576→576": (576, 576),
          "LM head 576→49152": (49152, 576)}


def p50_ms(call: Callable[[], object], reps: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.reps < 1:
        parser.error("--threads and --reps must be >= 1")
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import quantize_dynamic
    lines = ["# int8 linear kernels on this CPU (SmolLM2-135M shapes)", "",
             f"`python benchmarks/int8_kernels.py --threads {args.threads}"
             + (f" --out {args.out}" if args.out else "") + "`", "",
             f"torch {torch.__version__}, {args.threads} threads, p50 of {args.reps} calls, ms (weights in cache).", "",
             "| M tokens | layer | float32 | bfloat16 | int8 weights, float32 activations | "
             "int8 weights, bfloat16 activations | dynamic int8 (weights + activations) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for m in (1, 20, 60):
            for name, (n, k) in SHAPES.items():
                x = torch.randn(m, k, generator=generator)
                w = torch.randn(n, k, generator=generator) / k ** 0.5
                scales = w.abs().amax(1) / 127
                w8 = torch.round(w / scales[:, None]).to(torch.int8)
                xb, wb = x.bfloat16(), w.bfloat16()
                linear = torch.nn.Linear(k, n, bias=False)
                linear.weight.data.copy_(w)
                dynamic = quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
                cells = [p50_ms(lambda: F.linear(x, w), args.reps), p50_ms(lambda: F.linear(xb, wb), args.reps),
                         p50_ms(lambda: torch._weight_int8pack_mm(x, w8, scales), args.reps),
                         p50_ms(lambda: torch._weight_int8pack_mm(xb, w8, scales.bfloat16()), args.reps),
                         p50_ms(lambda: dynamic(x), args.reps)]
                lines.append(f"| {m} | {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
