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

from facephi.pipelines.config import REPO_ROOT, DemoConfig
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

SHIPPED_MODEL = REPO_ROOT / "checkpoints" / "facephi-default"
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


def run_demo(config: DemoConfig, progress: bool = True) -> list[Any]:
    """Answer for every photo in ``config.images``; prints one block per photo."""
    from facephi.model.checkpoints import check_model_dir
    from facephi.serve.predict import Predictor

    paths = _image_paths(config.images)
    truths = _true_labels(config.images)
    model = config.model
    if model is None and (SHIPPED_MODEL / "config.json").is_file():
        model = SHIPPED_MODEL
    if model is not None:
        check_model_dir(model, "--model")
    else:
        if not truths:
            raise FacePhiError(f"{config.images / 'labels.csv'}: missing or empty; the miniature training needs "
                               "the photos' labels (file,emotion), or pass --model")
        print("No trained FacePhi checkpoint given: training a miniature one on the example photos.")
        model = train_miniature(config, progress)
    print(f"Answering with {model}")
    predictor = Predictor.from_pretrained(model)
    predictions = predictor.predict(paths)
    correct = 0
    for path, prediction in zip(paths, predictions):
        truth = truths.get(path.name, "?")
        if prediction.error:
            print(f"{path.name:<20} (true: {truth}) ERROR: {prediction.error}")
            continue
        correct += int(prediction.predicted == truth)
        print(f"{path.name:<20} (true: {truth:<9}) -> {prediction.predicted or 'no class named'}\n"
              f"    {prediction.answer}")
    print(f"{correct}/{len(paths)} photos named with their labelled emotion.")
    return predictions
