"""`facephi predict`: answers and classes for images, landmark files or extracted datasets."""

from __future__ import annotations

import argparse
import json
import sys

from facephi.config import add_arguments, from_args
from facephi.serve.config import PredictConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict the emotion of images or landmark files",
        description="Each INPUT is an image (MediaPipe landmarks are extracted; the image itself never "
                    "reaches the model), a .npy file of raw MediaPipe landmarks [478, 3] or [N, 478, 3], "
                    "or a folder written by `facephi extract`. Prints the answer and the class; bad inputs "
                    "are reported one by one (exit status 1 when every input failed).",
    )
    add_arguments(p, PredictConfig)
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

    config = from_args(PredictConfig, args)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    predictor = Predictor.from_pretrained(config.model, instruction=config.instruction,
                                          max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    predictor.model.to(device)
    predictions = predictor.predict(config.inputs, image_size=config.image_size)
    for prediction in predictions:
        if config.json:
            print(json.dumps(prediction.to_dict(), ensure_ascii=False))
        elif prediction.ok:
            print(format_prediction(prediction))
        if not prediction.ok:
            print(f"facephi predict: {prediction.source}: {prediction.error}", file=sys.stderr)
    failed = sum(not p.ok for p in predictions)
    if failed:
        print(f"facephi predict: {failed} of {len(predictions)} inputs failed", file=sys.stderr)
    return 1 if failed == len(predictions) else 0
