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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_IMAGES = REPO_ROOT / "examples" / "images"
SHIPPED_MODEL = REPO_ROOT / "checkpoints" / "facephi-default"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class DemoConfig:
    """Settings of the miniature training run (used only when no trained model is given)."""

    images: Path = DEFAULT_IMAGES
    work: Path = Path("runs/demo")
    model: Path | None = None
    encoder_epochs: int = 20
    stage_steps: int = 12
    batch_size: int = 10
    threads: int | None = None
    seed: int = 0
    progress: bool = True


def _true_labels(images: Path) -> dict[str, str]:
    """``file -> emotion`` from ``labels.csv`` beside the photos, when there is one."""
    path = images / "labels.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["file"]: row.get("emotion", "") for row in csv.DictReader(fh) if row.get("file")}


def _image_paths(images: Path) -> list[Path]:
    if not images.is_dir():
        raise FacePhiError(f"{images}: image folder not found (pass --images DIR)")
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FacePhiError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def train_miniature(config: DemoConfig) -> Path:
    """Extract, align, stage 1 and stage 2 on the photos; returns the stage-2 model folder."""
    from facephi.landmarks.extract import ExtractConfig, extract
    from facephi.landmarks.store import LandmarkSet
    from facephi.train.align import AlignConfig, train_encoder
    from facephi.train.presets import preset
    from facephi.train.runner import run_stage
    from facephi.train.stages import FINAL_DIR
    from facephi.utils.io import read_json

    work = config.work
    landmarks = work / "landmarks"
    if not (landmarks / "manifest.json").is_file():
        print(f"[1/4] extracting MediaPipe landmarks from {config.images}")
        extract(ExtractConfig(source=config.images, out=landmarks, workers=1), progress=config.progress)
    train_size = len(LandmarkSet.load(landmarks).standard_splits()["train"])
    batch_size = max(2, min(config.batch_size, train_size))
    encoder = work / "encoder"
    if not ((encoder / "metrics.json").is_file() and "train_seconds" in read_json(encoder / "metrics.json")):
        print(f"[2/4] aligning a PointMLP-elite encoder to MiniLM captions ({config.encoder_epochs} epochs)")
        resume = (encoder / "last").is_dir()
        train_encoder(AlignConfig(
            data=str(landmarks), out=str(encoder), encoder="pointmlp-elite", epochs=config.encoder_epochs,
            batch_size=batch_size, lr=1e-3, probe_samples=batch_size, seed=config.seed,
            threads=config.threads, resume=resume, overwrite=not resume))
    previous: Path = encoder
    for stage in (1, 2):
        run_dir = work / f"stage{stage}"
        if not (run_dir / FINAL_DIR / "config.json").is_file():
            what = "the projector (LLM and encoder frozen)" if stage == 1 else "the projector and SmolLM2"
            print(f"[{stage + 2}/4] stage {stage}: training {what} for {config.stage_steps} steps")
            train_config = preset("cpu", stage).override(
                batch_size=batch_size, max_steps=config.stage_steps, epochs=config.stage_steps,
                limit_train=None, limit_valid=None, save_every=config.stage_steps, seed=config.seed,
                num_threads=config.threads, lr=1e-3 if stage == 1 else 1e-4)
            sources: dict[str, Any] = {"encoder": previous} if stage == 1 else {"init": previous}
            run_stage(train_config, landmarks, run_dir, resume=(run_dir / "config.json").is_file(),
                      progress=config.progress, **sources)
        previous = run_dir / FINAL_DIR
    return previous


def run_demo(config: DemoConfig) -> list[Any]:
    """Answer for every photo in ``config.images``; prints one block per photo."""
    from facephi.serve.predict import Predictor

    paths = _image_paths(config.images)
    model = config.model
    if model is None and (SHIPPED_MODEL / "config.json").is_file():
        model = SHIPPED_MODEL
    if model is None:
        print("No trained FacePhi checkpoint given: training a miniature one on the example photos.")
        model = train_miniature(config)
    elif not Path(model).exists():
        raise FacePhiError(f"{model}: model checkpoint not found (--model)")
    print(f"Answering with {model}")
    predictor = Predictor.from_pretrained(model)
    truths = _true_labels(config.images)
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
