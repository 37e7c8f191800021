"""`facephi demo`: the main job on the embedded default models (see facephi.pipelines.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from facephi.pipelines.demo import DEFAULT_IMAGES

    p = sub.add_parser("demo", help="FacePhi end to end on the example photos (SmolLM2 + MiniLM, offline)",
                       description="Answer for every example photo with a trained FacePhi model; without one, "
                       "train a miniature model on the photos first (extract -> align -> stage 1 -> stage 2).")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of face photos (+ labels.csv)")
    p.add_argument("--model", type=Path, help="trained FacePhi model folder (skips the miniature training)")
    p.add_argument("--work", type=Path, default=Path("runs/demo"), help="folder of the miniature run")
    p.add_argument("--stage-steps", type=int, default=12, help="optimizer steps of each LLM stage")
    p.add_argument("--encoder-epochs", type=int, default=20, help="epochs of the miniature encoder alignment")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facephi.pipelines.demo import DemoConfig, run_demo
    from facephi.utils.errors import FacePhiError

    for name in ("stage_steps", "encoder_epochs"):
        if getattr(args, name) < 1:
            raise FacePhiError(f"--{name.replace('_', '-')} must be >= 1")
    run_demo(DemoConfig(images=args.images, work=args.work, model=args.model, encoder_epochs=args.encoder_epochs,
                        stage_steps=args.stage_steps, threads=args.threads, progress=not args.no_progress))
    return 0
