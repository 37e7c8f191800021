"""`facephi demo`: the main job on the embedded default models (see facephi.pipelines.demo)."""

from __future__ import annotations

import argparse
import sys

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
    """Exit status 0 when at least one photo was answered, 1 when none could be."""
    from facephi.pipelines.demo import run_demo

    results = run_demo(from_args(DemoConfig, args), progress=args.progress)
    if not any("error" not in result for result in results):
        print(f"facephi demo: none of the {len(results)} photos could be answered (see the table)", file=sys.stderr)
        return 1
    return 0
