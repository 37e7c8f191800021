"""The final files of a landmark extraction, assembled from its finished chunks, and its manifest.

``landmarks.npy``, ``samples.csv``, ``failures.csv`` and, last, ``manifest.json`` (whose presence
marks the output complete); see :mod:`facephi.landmarks.extract` for the folder layout.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from facephi.labels import CLASSES
from facephi.landmarks.mesh import NUM_LANDMARKS
from facephi.landmarks.readers import SampleRecord, SourceListing
from facephi.utils.io import read_json, save_npy, write_json, write_text

FORMAT_VERSION = 1
BASE_COLUMNS = ("index", "path", "label", "split", "width", "height", "faces", "padded")
FAILURE_COLUMNS = ("path", "split", "reason", "detail")


def assemble_output(
    out: Path,
    partial: Path,
    chunks: list[list[SampleRecord]],
    records: list[SampleRecord],
    listing: SourceListing,
    options: dict[str, Any],
    run: dict[str, Any],
    fingerprint: str,
) -> dict[str, Any]:
    """Concatenate finished chunks in record order into the final files (each written atomically)."""
    extra_cols: list[str] = []
    for r in records:
        extra_cols += [k for k in r.extra if k not in extra_cols]
    sample_rows: list[list[Any]] = []
    failure_rows: list[list[Any]] = []
    landmarks: list[np.ndarray] = []
    stats: dict[str, Counter] = defaultdict(Counter)
    per_class: dict[str, Counter] = defaultdict(Counter)
    failures: Counter[str] = Counter()
    for c, chunk in enumerate(chunks):
        stem = partial / f"chunk_{c:06d}"
        points = np.load(stem.with_suffix(".npy"), allow_pickle=False)
        infos = read_json(stem.with_suffix(".json"))
        for r, pts, info in zip(chunk, points, infos):
            s = stats[r.split]
            s["records"] += 1
            if info["reason"]:
                failures[info["reason"]] += 1
                s["failed"] += 1
                failure_rows.append([r.path, r.split, info["reason"], info["detail"]])
                continue
            s["extracted"] += 1
            s["padding_retry"] += info["padded"]
            s["multiple_faces"] += info["faces"] > 1
            per_class[r.split][r.label or "unlabelled"] += 1
            landmarks.append(pts)
            sample_rows.append(
                [len(sample_rows), r.path, r.label, r.split, info["width"], info["height"],
                 info["faces"], info["padded"], *(r.extra.get(k, "") for k in extra_cols)]
            )
    array = np.stack(landmarks) if landmarks else np.zeros((0, NUM_LANDMARKS, 3), np.float32)
    save_npy(out / "landmarks.npy", array.astype(np.float32, copy=False))
    write_text(out / "samples.csv", csv_text([*BASE_COLUMNS, *extra_cols], sample_rows))
    write_text(out / "failures.csv", csv_text(FAILURE_COLUMNS, failure_rows))
    splits = {
        name: {**dict(stats[name]), "found_fraction": round(stats[name]["extracted"] / stats[name]["records"], 5),
               "classes": class_counts(per_class[name])}
        for name in stats
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": run["source"],
        "reader": listing.reader,
        "options": options,
        "fingerprint": fingerprint,  # a rerun with the same source and options reuses this output
        "num_landmarks": NUM_LANDMARKS,
        "counts": {
            "records": len(records),
            "extracted": len(sample_rows),
            "failed": len(failure_rows),
            "skipped_by_reader": dict(sorted(listing.skipped.items())),
        },
        "classes": class_counts(sum(per_class.values(), Counter())),
        "splits": splits,
        "failures": dict(sorted(failures.items())),
        "run": run,
    }
    write_json(out / "manifest.json", manifest)  # written last: marks the output complete
    return manifest


def class_counts(counts: Counter) -> dict[str, int]:
    ordered = {name: counts.get(name, 0) for name in CLASSES}
    if counts.get("unlabelled"):
        ordered["unlabelled"] = counts["unlabelled"]
    return ordered


def csv_text(header: tuple[str, ...] | list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """A short human summary of a manifest: faces found per split, failures by reason."""
    counts = manifest["counts"]
    lines = [f"extracted {counts['extracted']} of {counts['records']} images ({manifest['reader']} reader)"]
    for name, s in manifest["splits"].items():
        lines.append(
            f"  {name}: {s.get('extracted', 0)}/{s['records']} faces found ({100 * s['found_fraction']:.2f} %), "
            f"{s.get('padding_retry', 0)} via the border retry, {s.get('multiple_faces', 0)} with several faces"
        )
    for reason, n in manifest["failures"].items():
        lines.append(f"  failed: {n} × {reason}")
    for reason, n in counts["skipped_by_reader"].items():
        lines.append(f"  skipped by the reader: {n} × {reason}")
    return lines
