"""`facephi demo`: FacePhi end to end on a few face photos, on the embedded default models.

With a trained FacePhi checkpoint (``--model``, or one shipped in ``checkpoints/facephi-default``)
the demo only answers. Without one it runs the whole pipeline in miniature on the photos
themselves — extract landmarks → align a small PointMLP to MiniLM captions → stage 1 (projector)
→ stage 2 (SmolLM2) for a few steps — and then asks the model about every photo. Such a model has
seen ten faces for a minute: its answers show that the pipeline works, not what FacePhi can do
(``facephi reproduce`` measures that). Finished steps in ``--work`` are reused.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from facephi.pipelines.config import DemoConfig
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _true_labels(images: Path) -> dict[str, str]:
    """``file -> emotion`` from ``labels.csv`` beside the photos, when there is one."""
    path = images / "labels.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return {row["file"]: row.get("emotion", "") for row in csv.DictReader(fh) if row.get("file")}
    except (UnicodeDecodeError, KeyError, csv.Error) as exc:
        raise FacePhiError(f"{path}: unreadable labels file, expected UTF-8 CSV with columns file,emotion "
                           f"({exc})") from None


def _image_paths(images: Path) -> list[Path]:
    if not images.is_dir():
        raise FacePhiError(f"{images}: image folder not found (--images)")
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FacePhiError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) (--images)")
    return paths


def train_miniature(config: DemoConfig, progress: bool = True) -> Path:
    """Extract, align, stage 1 and stage 2 on the photos; returns the stage-2 model folder."""
    from facephi.landmarks.extract import ExtractConfig, extract
    from facephi.landmarks.store import LandmarkSet
    from facephi.presets import DEMO_STAGES
    from facephi.train.align import train_encoder
    from facephi.train.config import AlignConfig, TrainConfig
    from facephi.train.runner import run_stage
    from facephi.train.stages import FINAL_DIR, run_started
    from facephi.utils.io import read_json

    work = config.work
    landmarks = work / "landmarks"
    if not (landmarks / "manifest.json").is_file():
        print(f"[1/4] extracting MediaPipe landmarks from {config.images}")
    # Reuses a finished extraction of the same photos; refuses one of other photos or settings.
    extract(ExtractConfig(source=config.images, out=landmarks, workers=1), progress=progress)
    train_size = len(LandmarkSet.load(landmarks).select("train"))
    batch_size = max(2, min(config.batch_size, train_size))
    encoder = work / "encoder"
    if not ((encoder / "metrics.json").is_file() and "train_seconds" in read_json(encoder / "metrics.json")):
        print(f"[2/4] aligning a PointMLP-elite encoder to MiniLM captions ({config.encoder_epochs} epochs)")
        resume = (encoder / "last").is_dir()
        train_encoder(AlignConfig.for_preset(
            "demo", data=str(landmarks), out=str(encoder), epochs=config.encoder_epochs, batch_size=batch_size,
            probe_samples=batch_size, seed=config.seed, threads=config.threads, resume=resume,
            overwrite=not resume), progress=progress)
    previous: Path = encoder
    for stage in (1, 2):
        run_dir = work / f"stage{stage}"
        if not (run_dir / FINAL_DIR / "config.json").is_file():
            what = "the projector (LLM and encoder frozen)" if stage == 1 else "the projector and SmolLM2"
            print(f"[{stage + 2}/4] stage {stage}: training {what} for {config.stage_steps} steps")
            train_config = TrainConfig.for_preset(
                "cpu", stage, **DEMO_STAGES[stage], batch_size=batch_size, max_steps=config.stage_steps,
                epochs=config.stage_steps, save_every=config.stage_steps, seed=config.seed,
                threads=config.threads)
            sources: dict[str, Any] = {"encoder": previous, "llm": config.llm} if stage == 1 else {"init": previous}
            run_stage(train_config, landmarks, run_dir, resume=run_started(run_dir), progress=progress, **sources)
        previous = run_dir / FINAL_DIR
    return previous


def run_demo(config: DemoConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Answer for every photo in ``config.images`` and print a table (file, true label, answer, class,
    top probability); returns the JSON-like result of every photo."""
    from facephi.model.checkpoints import check_model_dir
    from facephi.model.defaults import MODEL_ENV, default_model
    from facephi.serve.api import FacePhi

    paths = _image_paths(config.images)
    truths = _true_labels(config.images)
    if config.train_from_scratch:
        if config.model is not None:
            raise FacePhiError("--train-from-scratch trains its own model; drop --model")
        if not truths:
            raise FacePhiError(f"{config.images / 'labels.csv'}: missing or empty; the miniature training needs "
                               "the photos' labels (file,emotion)")
        print("Training a miniature FacePhi model on the example photos (--train-from-scratch).")
        model = train_miniature(config, progress)
    else:
        model = config.model or default_model()
        if config.model is None and not (model / "config.json").is_file():
            raise FacePhiError(f"{model}: the shipped model is missing (set ${MODEL_ENV}, pass --model, or "
                               "train a miniature one with --train-from-scratch)")
        check_model_dir(model, "--model")
    print(f"Answering with {model} (only the 478 landmarks of each face reach the model)\n")
    with FacePhi.from_pretrained(model, threads=config.threads) as facephi:
        results = [facephi.predict_one(path) for path in paths]
    print(format_table(paths, results, truths))
    print("\nWeb demo: facephi serve   (then open http://127.0.0.1:8000)")
    return results


def format_table(paths: list[Path], results: list[dict[str, Any]], truths: dict[str, str]) -> str:
    """The demo's table: file, true label, answer, predicted class, top probability; then the tally."""
    header = ("file", "true label", "predicted", "top prob.", "answer")
    rows, correct = [], 0
    for path, result in zip(paths, results):
        truth = truths.get(path.name, "?")
        if "error" in result:
            rows.append((path.name, truth, "-", "-", f"ERROR: {result['error']}"))
            continue
        predicted = result.get("predicted_class") or "(none named)"
        top = max(result["scores"].values()) if result.get("scores") else None
        correct += int(result.get("predicted_class") == truth)
        rows.append((path.name, truth, predicted, "-" if top is None else f"{100 * top:.0f} %",
                     result.get("answer") or ""))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(4)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
             for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * 6)
    lines.append(f"\n{correct}/{len(paths)} photos named with their labelled emotion.")
    return "\n".join(lines)
