"""`facephi reproduce`: the paper's Table 1 protocol on any extracted landmark set.

Example::

    facephi reproduce --data data/ferplus --preset cpu --out runs/table1-ferplus

Re-running the same command skips finished steps and resumes interrupted training. Every step
records the settings it was made with (data fingerprint, seed, preset, limits, LLM, options); a
rerun with other settings is refused, naming them, unless --overwrite recomputes those steps.
"""

from __future__ import annotations

import argparse

from facephi.cli import add_progress_flag
from facephi.config import add_arguments, given
from facephi.pipelines.config import ReproduceConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the paper's Table 1 (encoders, two LLM stages, evaluation)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, ReproduceConfig)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from facephi.pipelines.reproduce import reproduce

    values = given(args, ReproduceConfig)
    config = ReproduceConfig.for_preset(values.pop("preset", "cpu"), **values)
    reproduce(config, progress=args.progress)
    print((Path(config.out) / "table1.md").read_text(encoding="utf-8"))
    return 0
