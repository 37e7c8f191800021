"""`facephi extract SOURCE --out DIR`: MediaPipe landmarks of a dataset in the interchange format."""

from __future__ import annotations

import argparse

from facephi.cli import add_progress_flag
from facephi.config import add_arguments, from_args
from facephi.landmarks.extract import ExtractConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract 478x3 MediaPipe landmarks from a dataset",
        description="Extract 478x3 MediaPipe FaceMesh landmarks from FER+, AffectNet or a class-folder "
        "tree into DIR (landmarks.npy, samples.csv, failures.csv, manifest.json). An interrupted run "
        "resumes; a DIR holding an extraction with other settings is refused unless --overwrite.",
    )
    add_arguments(p, ExtractConfig)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facephi.landmarks.extract import extract
    from facephi.landmarks.manifest import summary_lines

    config = from_args(ExtractConfig, args)
    result = extract(config, progress=args.progress)
    for line in summary_lines(result.manifest):
        print(line)
    print(f"wrote {result.out}/landmarks.npy, samples.csv, failures.csv, manifest.json")
    return 0
