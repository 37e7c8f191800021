"""Benchmark `facephi extract` on FER+: images/s with 1 and 2 workers, ratio to the bare FaceMesh call.

    python benchmarks/extract.py --source ../shared/data/ferplus --per-split 500 \
        --manifest data/ferplus/manifest.json --out benchmarks/results/extract.md

The timing runs extract the first ``--per-split`` images of each FER+ split (train, valid, test) with
the full pipeline (decode, mesh, border retry, chunk files, final assembly) in a fresh output folder,
once with 1 worker and once with 2 worker processes (including their start-up). The bare model time is
``FaceMesh.process`` alone on the same images, decoded beforehand, in this process. Faces found per
split come from ``--manifest`` (a full extraction) when given, else from the timed subset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def bare_mesh_seconds(source: Path, paths: list[str]) -> tuple[float, int]:
    """Mean seconds of one bare ``FaceMesh.process`` call over ``paths`` and how many found a face."""
    from facephi.landmarks.images import load_image
    from facephi.landmarks.mesh import FaceMesher

    images = [load_image(source / p).rgb for p in paths]
    with FaceMesher() as mesher:
        start = time.perf_counter()
        found = sum(bool(mesher.process(rgb)) for rgb in images)
        elapsed = time.perf_counter() - start
    return elapsed / len(images), found


def timed_extract(source: Path, per_split: int, workers: int) -> tuple[float, dict]:
    from facephi.landmarks.extract import ExtractConfig, extract

    with tempfile.TemporaryDirectory(prefix="facephi-bench-") as tmp:
        start = time.perf_counter()
        result = extract(ExtractConfig(source, Path(tmp) / "out", format="ferplus", workers=workers,
                                       limit=per_split), progress=False)
        return time.perf_counter() - start, result.manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/ferplus"))
    parser.add_argument("--per-split", type=int, default=500, help="images per split in the timing runs")
    parser.add_argument("--manifest", type=Path, default=None, help="manifest.json of a full FER+ extraction")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--note", action="append", default=[], help="a line appended to the report")
    args = parser.parse_args()

    from facephi.landmarks.readers import read_source
    from facephi.utils.io import write_text
    from facephi.utils.runinfo import package_versions

    listing = read_source(args.source, "ferplus")
    taken: dict[str, int] = {}
    subset = []
    for r in listing.records:
        if taken.get(r.split, 0) < args.per_split:
            taken[r.split] = taken.get(r.split, 0) + 1
            subset.append(r.path)
    n = len(subset)

    load = os.getloadavg()[0]  # 1-minute load average before any timing
    bare_s, bare_found = bare_mesh_seconds(args.source, subset)
    t1, manifest1 = timed_extract(args.source, args.per_split, workers=1)
    t2, manifest2 = timed_extract(args.source, args.per_split, workers=2)
    ips1, ips2 = n / t1, n / t2
    full = json.loads(args.manifest.read_text()) if args.manifest else manifest2

    lines = [
        "# `facephi extract` benchmark (FER+)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(load average {load:.1f} when the timing started), "
        f"mediapipe {package_versions(('mediapipe',))['mediapipe']}. "
        f"Command: `python benchmarks/extract.py --per-split {args.per_split}"
        + (f" --manifest {args.manifest}`." if args.manifest else "`."),
        "",
        f"## Throughput on a subset: the first {args.per_split} images of each split ({n} images)",
        "",
        "| what | time per image | images/s | ratio to the bare call |",
        "|---|---:|---:|---:|",
        f"| bare `FaceMesh.process` (pre-decoded, no retry, 1 process) | {1000 * bare_s:.2f} ms | "
        f"{1 / bare_s:.1f} | 1.00 |",
        f"| `facephi extract`, 1 worker | {1000 * t1 / n:.2f} ms | {ips1:.1f} | {t1 / n / bare_s:.2f} |",
        f"| `facephi extract`, 2 workers | {1000 * t2 / n:.2f} ms | {ips2:.1f} | {t2 / n / bare_s:.2f} |",
        "",
        f"Bare call found a face in {bare_found}/{n} images ({100 * bare_found / n:.2f} %); the pipeline "
        f"with the 25 % border retry found {manifest1['counts']['extracted']}/{n} "
        f"({100 * manifest1['counts']['extracted'] / n:.2f} %). 2-worker speed-up over 1 worker: "
        f"{t1 / t2:.2f}x. The pipeline time includes decoding, the retry on misses, chunk files, assembly "
        "and (2 workers) spawning the worker processes.",
        "",
        "## Faces found per split" + (" (full extraction, from its manifest)" if args.manifest else " (subset)"),
        "",
        "| split | images | faces found | found | via border retry | several faces |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for split, s in full["splits"].items():
        lines.append(
            f"| {split} | {s['records']} | {s.get('extracted', 0)} | {100 * s['found_fraction']:.2f} % | "
            f"{s.get('padding_retry', 0)} | {s.get('multiple_faces', 0)} |"
        )
    total = full["counts"]
    lines += [
        f"| all | {total['records']} | {total['extracted']} | {100 * total['extracted'] / total['records']:.2f} % "
        f"| {sum(s.get('padding_retry', 0) for s in full['splits'].values())} "
        f"| {sum(s.get('multiple_faces', 0) for s in full['splits'].values())} |",
        "",
        "Images dropped by the FER+ label policy before extraction (ties, unknown + not-a-face reaching the "
        f"top count): {sum(total['skipped_by_reader'].values())}.",
        "",
        *[f"{note}\n" for note in args.note],
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        write_text(args.out, report)


if __name__ == "__main__":
    main()
