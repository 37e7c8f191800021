"""Parallel, resumable, deterministic landmark extraction writing the facephi interchange format.

Output folder ``DIR``:

- ``landmarks.npy``: float32 ``[N, 478, 3]`` raw MediaPipe coordinates (x, y as fractions of the
  image width/height, z as MediaPipe gives it), one row per extracted face;
- ``samples.csv``: ``index,path,label,split,width,height,faces,padded`` (+ ``votes_<class>``,
  ``valence``, ``arousal`` when the source has them); ``index`` is the row of ``landmarks.npy``,
  ``path`` is relative to the source, ``width``/``height`` the size of the image the mesh saw (the
  face crop when the source gives a face box);
- ``failures.csv``: ``path,split,reason,detail`` for every image without landmarks;
- ``manifest.json``: source, reader, options, counts per split and class, failures by reason,
  the run record (command, versions).

Work is split into chunks of records processed by a pool of workers (each creates one FaceMesh);
every finished chunk is written atomically to ``DIR/.partial/``. A killed run resumes from the
finished chunks and, because the final files are assembled from chunks in record order, ends with
byte-identical output. The final files are written atomically, then ``.partial`` is removed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facephi.labels import CLASSES
from facephi.landmarks.images import ImageError, crop_box, load_image
from facephi.landmarks.mesh import NUM_LANDMARKS, FaceMesher
from facephi.landmarks.readers import SampleRecord, SourceListing, read_source
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json, save_npy, write_json, write_text
from facephi.utils.runinfo import run_info

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PARTIAL_DIR = ".partial"
BASE_COLUMNS = ("index", "path", "label", "split", "width", "height", "faces", "padded")
FAILURE_COLUMNS = ("path", "split", "reason", "detail")


@dataclass
class ExtractConfig:
    """Settings of one extraction run (everything except ``workers`` is part of the resume fingerprint)."""

    source: Path
    out: Path
    format: str = "auto"
    workers: int | None = None  # None: all cores
    limit: int | None = None  # at most this many records per split
    keep_ambiguous: bool = False  # FER+: keep ambiguous images, unlabelled
    crop_margin: float = 0.2  # face box margin (fraction of the box size on each side)
    padding: float = 0.25  # black border of the no-face retry
    max_side: int = 1280  # images are downscaled to this longest side before the mesh
    max_faces: int = 4
    chunk_size: int = 128


@dataclass
class _MeshSettings:
    padding: float
    max_side: int
    max_faces: int
    crop_margin: float


@dataclass
class ExtractResult:
    """Summary of a finished run (also written as ``manifest.json``)."""

    out: Path
    manifest: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- worker side
_MESHER: FaceMesher | None = None
_SETTINGS: _MeshSettings | None = None


def _init_worker(settings: _MeshSettings) -> None:
    global _MESHER, _SETTINGS
    _SETTINGS = settings
    _MESHER = FaceMesher(max_faces=settings.max_faces, padding=settings.padding)


def _close_worker() -> None:
    global _MESHER
    if _MESHER is not None:
        _MESHER.close()
        _MESHER = None


def extract_one(
    mesher: FaceMesher, path: Path, box: tuple[float, float, float, float] | None, settings: _MeshSettings
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Landmarks of one image and its ``samples.csv`` / ``failures.csv`` fields; never raises."""
    info: dict[str, Any] = {"width": 0, "height": 0, "faces": 0, "padded": 0, "reason": "", "detail": ""}
    try:
        image = load_image(path, max_side=settings.max_side)
        if box is not None:
            image = crop_box(image, box, settings.crop_margin)
        info["width"], info["height"] = image.width, image.height
        result = mesher(image.rgb)
    except ImageError as exc:
        info.update(reason=exc.reason, detail=exc.detail)
        return None, info
    except Exception as exc:  # noqa: BLE001 - a bad image must never stop a run
        info.update(reason="mesh error", detail=f"{type(exc).__name__}: {exc}")
        return None, info
    info["faces"] = result.faces
    info["padded"] = int(result.padded)
    if result.points is None:
        info.update(reason="no face", detail="no face found, also with a 25% border" if settings.padding else "no face found")
        return None, info
    return result.points, info


def _process_chunk(task: tuple[int, list[tuple[str, Any]], str]) -> tuple[int, int]:
    chunk_id, items, partial_dir = task
    assert _MESHER is not None and _SETTINGS is not None
    points = np.full((len(items), NUM_LANDMARKS, 3), np.nan, dtype=np.float32)
    infos = []
    for i, (path, box) in enumerate(items):
        pts, info = extract_one(_MESHER, Path(path), box, _SETTINGS)
        if pts is not None:
            points[i] = pts
        infos.append(info)
    stem = Path(partial_dir) / f"chunk_{chunk_id:06d}"
    save_npy(stem.with_suffix(".npy"), points)
    write_json(stem.with_suffix(".json"), infos)  # written last: marks the chunk complete
    return chunk_id, len(items)


# ----------------------------------------------------------------------------- driver side
def extract(config: ExtractConfig, progress: bool = True) -> ExtractResult:
    """Run (or resume) an extraction and write the output folder; returns its manifest."""
    listing = read_source(config.source, config.format, keep_ambiguous=config.keep_ambiguous)
    records = _apply_limit(listing.records, config.limit)
    if not records:
        raise FacePhiError(f"{config.source}: no samples to extract ({listing.reader} reader)")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise FacePhiError(f"{out}: output path exists and is not a directory")
    partial = out / PARTIAL_DIR
    job = _open_partial(partial, config, listing.reader, records)
    chunks = [records[i : i + config.chunk_size] for i in range(0, len(records), config.chunk_size)]
    pending = [c for c in range(len(chunks)) if not (partial / f"chunk_{c:06d}.json").is_file()]
    done_records = len(records) - sum(len(chunks[c]) for c in pending)
    if done_records:
        logger.info("resuming: %d of %d images already extracted", done_records, len(records))
    source = Path(config.source).resolve()
    tasks = [
        (c, [(str(source / r.path), r.box) for r in chunks[c]], str(partial)) for c in pending
    ]
    settings = _MeshSettings(config.padding, config.max_side, config.max_faces, config.crop_margin)
    _run_tasks(tasks, settings, config.workers, len(records), done_records, progress)
    manifest = _assemble(out, partial, chunks, records, listing, config, job["run"])
    shutil.rmtree(partial)
    return ExtractResult(out=out, manifest=manifest)


def _apply_limit(records: list[SampleRecord], limit: int | None) -> list[SampleRecord]:
    if limit is None:
        return records
    if limit <= 0:
        raise FacePhiError(f"--limit must be positive, got {limit}")
    taken: Counter[str] = Counter()
    kept = []
    for r in records:
        if taken[r.split] < limit:
            taken[r.split] += 1
            kept.append(r)
    return kept


def _fingerprint(config: ExtractConfig, reader: str, records: list[SampleRecord]) -> str:
    digest = hashlib.sha256()
    options = {k: v for k, v in asdict(config).items() if k not in ("workers", "out")}
    digest.update(json.dumps({"reader": reader, **options}, sort_keys=True, default=str).encode())
    for r in records:
        digest.update(json.dumps([r.path, r.label, r.split, r.box, r.extra], sort_keys=True).encode())
    return digest.hexdigest()


def _open_partial(partial: Path, config: ExtractConfig, reader: str, records: list[SampleRecord]) -> dict:
    """Reuse ``.partial`` when it belongs to the same job, otherwise start it afresh."""
    fingerprint = _fingerprint(config, reader, records)
    job_file = partial / "job.json"
    if job_file.is_file():
        try:
            job = read_json(job_file)
        except ValueError:
            job = {}
        if job.get("fingerprint") == fingerprint:
            return job
        logger.warning("%s belongs to a different extraction; starting over", partial)
    if partial.exists():
        shutil.rmtree(partial)
    manifest = Path(config.out) / "manifest.json"
    if manifest.exists():
        manifest.unlink()  # the old output is being replaced: it is no longer complete
    job = {
        "fingerprint": fingerprint,
        "run": run_info(source=str(Path(config.source).resolve())),
    }
    try:
        write_json(job_file, job)
    except OSError as exc:
        raise FacePhiError(f"{config.out}: cannot write the output folder ({exc.strerror or exc})") from None
    return job


def _run_tasks(tasks: list, settings: _MeshSettings, workers: int | None, total: int, done: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks))) if tasks else 0
    bar = tqdm(total=total, initial=done, unit="img", desc="extract", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        if workers == 1:
            _init_worker(settings)
            try:
                for task in tasks:
                    bar.update(_process_chunk(task)[1])
            finally:
                _close_worker()
        elif workers > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork after MediaPipe threads exist
            with ctx.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
                for _, n in pool.imap_unordered(_process_chunk, tasks):
                    bar.update(n)
    finally:
        bar.close()


def _assemble(
    out: Path,
    partial: Path,
    chunks: list[list[SampleRecord]],
    records: list[SampleRecord],
    listing: SourceListing,
    config: ExtractConfig,
    run: dict[str, Any],
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
    write_text(out / "samples.csv", _csv([*BASE_COLUMNS, *extra_cols], sample_rows))
    write_text(out / "failures.csv", _csv(FAILURE_COLUMNS, failure_rows))
    splits = {
        name: {**dict(stats[name]), "found_fraction": round(stats[name]["extracted"] / stats[name]["records"], 5),
               "classes": _class_counts(per_class[name])}
        for name in stats
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": run.get("source", str(config.source)),
        "reader": listing.reader,
        "options": {k: v for k, v in asdict(config).items() if k not in ("source", "out", "workers")},
        "num_landmarks": NUM_LANDMARKS,
        "counts": {
            "records": len(records),
            "extracted": len(sample_rows),
            "failed": len(failure_rows),
            "skipped_by_reader": dict(sorted(listing.skipped.items())),
        },
        "classes": _class_counts(sum(per_class.values(), Counter())),
        "splits": splits,
        "failures": dict(sorted(failures.items())),
        "run": run,
    }
    write_json(out / "manifest.json", manifest)  # written last: marks the output complete
    return manifest


def _class_counts(counts: Counter) -> dict[str, int]:
    ordered = {name: counts.get(name, 0) for name in CLASSES}
    if counts.get("unlabelled"):
        ordered["unlabelled"] = counts["unlabelled"]
    return ordered


def _csv(header: tuple[str, ...] | list[str], rows: list[list[Any]]) -> str:
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
