"""`facephi eval`: score a FacePhi model (keyword matching) or a landmark encoder on a dataset split."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a FacePhi model or landmark encoder on an extracted dataset",
        description="Greedy answers of a FacePhi model scored by the paper's keyword matching (or the "
                    "classifier of a landmark encoder checkpoint): accuracy, balanced accuracy, macro-F1, "
                    "per-class recall, keyword-miss rate. Writes metrics.json, predictions.jsonl, "
                    "confusion.png and report.md to --out; an interrupted run resumes.",
    )
    p.add_argument("--model", required=True, type=Path, help="FacePhi model or landmark encoder checkpoint folder")
    p.add_argument("--data", required=True, type=Path, help="dataset folder written by `facephi extract`")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=int, default=16, help="samples per generation batch (default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: 32)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N samples")
    p.add_argument("--instructions", choices=("random", "first"), default="random",
                   help="instruction per sample: seeded random Table-2 template (default) or always the first")
    p.add_argument("--instruction", default=None, help="ask this fixed instruction instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the instruction draw and of --limit (default: 0)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the valid/test split carved from train when the dataset has none (default: 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resolve_device(name: str) -> "torch.device":  # noqa: F821 - torch is imported lazily
    """``auto`` → CUDA when available, else CPU; anything else as torch spells it."""
    import torch

    from facephi.utils.errors import FacePhiError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FacePhiError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FacePhiError(f"--device {name}: CUDA is not available on this machine")
    return device


def run(args: argparse.Namespace) -> int:
    import torch

    from facephi.eval.evaluate import evaluate_encoder, evaluate_model
    from facephi.eval.report import summary_lines
    from facephi.landmarks.store import LandmarkSet
    from facephi.serve.predict import ENCODER, checkpoint_type
    from facephi.utils.errors import FacePhiError

    for name in ("batch_size", "max_new_tokens", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise FacePhiError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    kind = checkpoint_type(args.model)
    data = LandmarkSet.load(args.data)
    common = dict(seed=args.seed, limit=args.limit, out_dir=args.out, progress=not args.no_progress,
                  split_seed=args.split_seed, settings={"model": str(args.model), "data": str(args.data)})
    if kind == ENCODER:
        from facephi.model.encoder import LandmarkEncoder

        encoder = LandmarkEncoder.from_pretrained(args.model).to(device)
        result = evaluate_encoder(encoder, data, args.split, batch_size=args.batch_size, **common)
    else:
        from facephi.model.facephi import FacePhiModel

        model = FacePhiModel.from_pretrained(args.model).to(device)
        result = evaluate_model(model, model.formatter, data, args.split, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, instruction_policy=args.instructions,
                                instruction=args.instruction, **common)
    width = max(len(label) for label, _ in summary_lines(result.metrics))
    print(f"{kind} {args.model} on {args.data} [{args.split}] in {result.seconds:.0f} s")
    for label, value in summary_lines(result.metrics):
        print(f"  {label:<{width}}  {value}")
    print(f"  -> {args.out}/report.md, metrics.json, predictions.jsonl, confusion.png")
    return 0
