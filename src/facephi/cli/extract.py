"""`facephi extract SOURCE --out DIR`: MediaPipe landmarks of a dataset in the interchange format."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract 478x3 MediaPipe landmarks from a dataset",
        description="Extract 478x3 MediaPipe FaceMesh landmarks from FER+, AffectNet or a class-folder "
        "tree into DIR (landmarks.npy, samples.csv, failures.csv, manifest.json). Interrupted runs resume.",
    )
    p.add_argument("source", type=Path, metavar="SOURCE", help="dataset root folder")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", default="auto", choices=("auto", "ferplus", "affectnet", "folder"),
                   help="dataset layout (default: detect)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N images per split")
    p.add_argument("--keep-ambiguous", action="store_true",
                   help="FER+: keep images without a clear plurality label (unlabelled, votes kept)")
    p.add_argument("--crop-margin", type=float, default=0.2, metavar="F",
                   help="margin around source face boxes, as a fraction of the box (default 0.2)")
    p.add_argument("--max-side", type=int, default=1280, metavar="PX",
                   help="downscale larger images to this longest side before the mesh (default 1280)")
    p.add_argument("--chunk-size", type=int, default=128, metavar="N", help="images per resumable chunk")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facephi.landmarks.extract import ExtractConfig, extract, summary_lines
    from facephi.utils.errors import FacePhiError

    if args.workers is not None and args.workers < 1:
        raise FacePhiError(f"--workers must be at least 1, got {args.workers}")
    if args.chunk_size < 1 or args.max_side < 64 or args.crop_margin < 0:
        raise FacePhiError("--chunk-size must be >= 1, --max-side >= 64 and --crop-margin >= 0")
    config = ExtractConfig(
        source=args.source, out=args.out, format=args.format, workers=args.workers, limit=args.limit,
        keep_ambiguous=args.keep_ambiguous, crop_margin=args.crop_margin, max_side=args.max_side,
        chunk_size=args.chunk_size,
    )
    result = extract(config, progress=not args.no_progress)
    for line in summary_lines(result.manifest):
        print(line)
    print(f"wrote {result.out}/landmarks.npy, samples.csv, failures.csv, manifest.json")
    return 0
