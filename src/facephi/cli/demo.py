"""`facephi demo`: the main job on the embedded default models (see facephi.pipelines.demo)."""

from __future__ import annotations

import argparse

from facephi.cli import add_progress_flag
from facephi.config import add_arguments, from_args
from facephi.pipelines.config import DemoConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="FacePhi end to end on the example photos (SmolLM2 + MiniLM, offline)",
                       description="Answer for every example photo with a trained FacePhi model; without one, "
                       "train a miniature model on the photos first (extract -> align -> stage 1 -> stage 2).")
    add_arguments(p, DemoConfig)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facephi.pipelines.demo import run_demo

    run_demo(from_args(DemoConfig, args), progress=args.progress)
    return 0
