"""`facephi predict`: answers and classes for images, landmark files or extracted datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict the emotion of images or landmark files",
        description="Each INPUT is an image (MediaPipe landmarks are extracted; the image itself never "
                    "reaches the model), a .npy file of raw MediaPipe landmarks [478, 3] or [N, 478, 3], "
                    "or a folder written by `facephi extract`. Prints the answer and the class; bad inputs "
                    "are reported one by one (exit status 1 when every input failed).",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("--model", required=True, type=Path, help="FacePhi model or landmark encoder checkpoint folder")
    p.add_argument("--instruction", default=None, help="question asked (default: the paper's first instruction)")
    p.add_argument("--image-size", nargs=2, type=float, metavar=("W", "H"), default=None,
                   help="image size of .npy landmarks (default: a square image)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: 32)")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per batch (default: 16)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=run)


def format_prediction(prediction: "Prediction", top: int = 3) -> str:  # noqa: F821
    """Human-readable lines of one successful prediction."""
    lines = [prediction.source]
    if prediction.answer is not None:
        lines.append(f"  answer:  {prediction.answer}")
    lines.append(f"  class:   {prediction.predicted or '(no class named)'}"
                 + (f"   (label: {prediction.label})" if prediction.label else ""))
    if prediction.probabilities:
        best = sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])[:top]
        lines.append("  encoder: " + ", ".join(f"{name} {100 * p:.1f} %" for name, p in best))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from facephi.cli.eval import resolve_device
    from facephi.serve.predict import Predictor
    from facephi.utils.errors import FacePhiError

    for name in ("batch_size", "max_new_tokens", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise FacePhiError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor.from_pretrained(args.model, instruction=args.instruction,
                                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    predictor.model.to(resolve_device(args.device))
    predictions = predictor.predict(args.inputs, image_size=args.image_size)
    for prediction in predictions:
        if args.json:
            print(json.dumps(prediction.to_dict(), ensure_ascii=False))
        elif prediction.ok:
            print(format_prediction(prediction))
        if not prediction.ok:
            print(f"facephi predict: {prediction.source}: {prediction.error}", file=sys.stderr)
    failed = sum(not p.ok for p in predictions)
    if failed:
        print(f"facephi predict: {failed} of {len(predictions)} inputs failed", file=sys.stderr)
    return 1 if failed == len(predictions) else 0
