"""Parallel, resumable, deterministic landmark extraction writing the facephi interchange format.

Output folder ``DIR``:

- ``landmarks.npy``: float32 ``[N, 478, 3]`` raw MediaPipe coordinates (x, y as fractions of the
  image width/height, z as MediaPipe gives it), one row per extracted face;
- ``samples.csv``: ``index,path,label,split,width,height,faces,padded`` (+ ``votes_<class>``,
  ``valence``, ``arousal`` when the source has them); ``index`` is the row of ``landmarks.npy``,
  ``path`` is relative to the source, ``width``/``height`` the size of the image the mesh saw (the
  face crop when the source gives a face box), before any ``upscale``;
- ``failures.csv``: ``path,split,reason,detail`` for every image without landmarks;
- ``manifest.json``: source, reader, options, the job fingerprint, counts per split and class,
  failures by reason, the run record (command, versions).

``DIR`` is never silently reused or overwritten: a finished extraction with the same fingerprint
(source, reader, options, record list) is returned as it is; another extraction (finished or in
``.partial``) or a non-empty folder that is no extraction is refused unless ``overwrite``. A run
that finds no face at all writes its files, then raises a FacePhiError (so does its rerun).

Work is split into chunks of records processed by a pool of workers (each creates one FaceMesh);
every finished chunk is written atomically to ``DIR/.partial/``. A killed run resumes from the
finished chunks and, because the final files are assembled from chunks in record order, ends with
byte-identical output. The final files are written atomically, then ``.partial`` is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facephi.config import Config, setting
from facephi.landmarks.images import INTERPOLATIONS, ImageError, crop_box, load_image, resample
from facephi.landmarks.manifest import assemble_output
from facephi.landmarks.mesh import FaceMesher, MeshError
from facephi.presets import NUM_LANDMARKS
from facephi.landmarks.readers import FORMATS, SampleRecord, read_source
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json, save_npy, write_json
from facephi.utils.runinfo import run_info

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"


@dataclass
class ExtractConfig(Config):
    """Settings of one extraction run (all but ``out``, ``workers``, ``overwrite`` form the job fingerprint)."""

    source: Path = setting(positional=True, metavar="SOURCE", help="dataset root folder")
    out: Path = setting(metavar="DIR", help="output folder")
    format: str = setting("auto", choices=("auto", *FORMATS), help="dataset layout (auto: detect)")
    workers: int | None = setting(None, min=1, metavar="N", help="worker processes (default: all cores)")
    limit: int | None = setting(None, min=1, unlimited=True, help="at most N images per split (the first N)")
    keep_ambiguous: bool = setting(False, help="FER+: keep images without a clear plurality label (unlabelled, "
                                               "votes kept)")
    crop_margin: float = setting(0.2, min=0, max=2, metavar="F",
                                 help="margin around source face boxes, as a fraction of the box")
    padding: float = setting(0.25, min=0, max=1, cli=False, help="black border of the no-face retry")
    max_side: int = setting(1280, min=64, max=16384, metavar="PX",
                            help="downscale larger images to this longest side before the mesh")
    max_faces: int = setting(4, min=1, max=64, cli=False, help="faces the mesh looks for (the largest is kept)")
    upscale: int | None = setting(None, min=16, max=4096, metavar="PX",
                                  help="enlarge images (face crops) whose longest side is smaller to PX before the "
                                       "mesh (default: never), e.g. to mesh FER+'s 48 px faces at another resolution")
    interpolation: str = setting("cubic", choices=INTERPOLATIONS, help="the filter of --upscale")
    blur: float = setting(0.0, min=0, max=20, metavar="SIGMA",
                          help="Gaussian blur (sigma in the image's own pixels) before --upscale and the mesh")
    chunk_size: int = setting(128, min=1, metavar="N", help="images per resumable chunk")
    overwrite: bool = setting(False, help="replace an extraction with other settings (or other files) in --out")

    def check(self) -> None:
        if self.upscale is None and self.interpolation != "cubic":
            raise self.error("interpolation", f"{self.interpolation} is the filter of --upscale, which is not given")


@dataclass
class _MeshSettings:
    padding: float
    max_side: int
    max_faces: int
    crop_margin: float
    upscale: int | None = None
    interpolation: str = "cubic"
    blur: float = 0.0


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
    """Landmarks of one image and its ``samples.csv`` / ``failures.csv`` fields.

    A bad image (undecodable, unreadable, too large for memory, refused by the face mesh) is a
    failure row; any other exception is a bug and propagates."""
    info: dict[str, Any] = {"width": 0, "height": 0, "faces": 0, "padded": 0, "reason": "", "detail": ""}
    try:
        image = load_image(path, max_side=settings.max_side)
        if box is not None:
            image = crop_box(image, box, settings.crop_margin)
        info["width"], info["height"] = image.width, image.height
        result = mesher(resample(image.rgb, settings.upscale, settings.interpolation, settings.blur))
    except ImageError as exc:
        info.update(reason=exc.reason, detail=exc.detail)
        return None, info
    except OSError as exc:  # e.g. no permission to read the file
        info.update(reason="unreadable file", detail=f"{path}: {exc.strerror or exc}")
        return None, info
    except MemoryError:
        info.update(reason="image too large", detail=f"{path}: out of memory while decoding")
        return None, info
    except MeshError as exc:
        info.update(reason="mesh error", detail=str(exc))
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
    described = _describe_job(config, listing.reader, records)
    finished = _check_out(out, config, described)
    if finished is not None:
        logger.info("%s: already extracted with these settings; nothing to redo", out)
        _require_faces(out, finished)
        return ExtractResult(out=out, manifest=finished)
    job = _open_partial(partial, config, described)
    chunks = [records[i : i + config.chunk_size] for i in range(0, len(records), config.chunk_size)]
    pending = [c for c in range(len(chunks)) if not (partial / f"chunk_{c:06d}.json").is_file()]
    done_records = len(records) - sum(len(chunks[c]) for c in pending)
    if done_records:
        logger.info("resuming: %d of %d images already extracted", done_records, len(records))
    source = Path(config.source).resolve()
    tasks = [
        (c, [(str(source / r.path), r.box) for r in chunks[c]], str(partial)) for c in pending
    ]
    settings = _MeshSettings(config.padding, config.max_side, config.max_faces, config.crop_margin,
                             config.upscale, config.interpolation, config.blur)
    _run_tasks(tasks, settings, config.workers, len(records), done_records, progress)
    manifest = assemble_output(out, partial, chunks, records, listing, _options(config),
                               {"source": str(config.source), **job["run"]}, described["fingerprint"])
    shutil.rmtree(partial)
    _require_faces(out, manifest)
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


_NOT_FINGERPRINTED = ("out", "workers", "overwrite")  # change nothing in the output


def _options(config: ExtractConfig) -> dict[str, Any]:
    """The settings recorded in ``job.json`` / ``manifest.json`` (JSON values; the source apart)."""
    options = {k: v for k, v in asdict(config).items() if k not in (*_NOT_FINGERPRINTED, "source")}
    # resampling that is off is not recorded: extractions made before it existed keep their fingerprint
    if options["upscale"] is None:
        del options["upscale"], options["interpolation"]
    if options["blur"] == 0:
        del options["blur"]
    return json.loads(json.dumps(options, default=str))


def _describe_job(config: ExtractConfig, reader: str, records: list[SampleRecord]) -> dict[str, Any]:
    """Fingerprint (settings + the record list), resolved source, reader and options of a job."""
    source = str(Path(config.source).resolve())
    options = _options(config)
    digest = hashlib.sha256()
    digest.update(json.dumps({"reader": reader, "source": source, **options}, sort_keys=True).encode())
    for r in records:
        digest.update(json.dumps([r.path, r.label, r.split, r.box, r.extra], sort_keys=True).encode())
    return {"fingerprint": digest.hexdigest(), "source": source, "reader": reader, "options": options}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _check_out(out: Path, config: ExtractConfig, job: dict[str, Any]) -> dict[str, Any] | None:
    """Decide what to do with what ``out`` already holds, before anything is written.

    Returns the manifest of a finished extraction with the same fingerprint (nothing to redo), or
    None: ``out`` is absent / empty / holds an unfinished job with the same fingerprint (resumed).
    Another extraction, finished or not, or a non-empty folder that is no extraction, is refused
    with a FacePhiError unless ``config.overwrite``; then the old job's files are removed (files
    that are no part of an extraction are left alone, the new output is written beside them).
    """
    if not out.is_dir():
        return None
    manifest_file, partial = out / "manifest.json", out / PARTIAL_DIR
    if manifest_file.is_file():
        old = _read_record(manifest_file)
        if old is not None and old.get("fingerprint") == job["fingerprint"] and not config.overwrite:
            return old
        what = "already holds an extraction"
    elif (partial / "job.json").is_file():
        old = _read_record(partial / "job.json")
        if old is None or (old.get("fingerprint") == job["fingerprint"] and not config.overwrite):
            return None  # resumed, or (unreadable record of an unfinished job) started afresh
        what = "holds an unfinished extraction"
    else:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in (PARTIAL_DIR, ".DS_Store"))
        if foreign and not config.overwrite:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise FacePhiError(f"{out} is not empty and holds no extraction ({shown}); "
                               "pass --overwrite to write into it anyway or choose another --out")
        if foreign:
            logger.warning("%s: --overwrite: writing the extraction beside %d other file(s)", out, len(foreign))
        return None
    if not config.overwrite:
        source = (old or {}).get("source") or "an unknown source"
        raise FacePhiError(f"{out} {what} of {source} with other settings ({_differences(old, job)}); "
                           "pass --overwrite to replace it or choose another --out")
    logger.warning("%s: --overwrite: replacing the extraction there", out)
    if manifest_file.exists():
        manifest_file.unlink()  # first: the old output is no longer complete
    if partial.exists():
        shutil.rmtree(partial)
    return None


def _differences(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """``crop_margin 0.2 → 0.3, limit none → 5``: what differs between a recorded job and this one."""
    if old is None:
        return "its record is unreadable"
    changes = [f"{key} {_show(old[key])} → {_show(new[key])}"
               for key in ("source", "reader") if old.get(key) not in (None, new[key])]
    old_options, new_options = old.get("options") or {}, new["options"]
    if old_options:  # an option recorded on one side only is off (resampling) on the other
        changes += [f"{key} {_show(old_options.get(key, 'off'))} → {_show(new_options.get(key, 'off'))}"
                    for key in dict.fromkeys([*old_options, *new_options])
                    if old_options.get(key, "off") != new_options.get(key, "off")]
    if changes:
        return ", ".join(changes)
    if "fingerprint" not in old or "options" not in old:
        return "made by an older facephi that recorded no fingerprint"
    return "the source's images or labels changed"


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _require_faces(out: Path, manifest: dict[str, Any]) -> None:
    """An extraction without a single face is a failure: FacePhiError with the failure reasons."""
    counts = manifest.get("counts") or {}
    if counts.get("extracted", 1):
        return
    n = counts.get("records", 0)
    reasons = sorted((manifest.get("failures") or {}).items(), key=lambda item: (-item[1], item[0]))
    where = "the only image" if n == 1 else f"any of the {n:,} images"
    raise FacePhiError(f"no face found in {where} ({', '.join(f'{k} × {r}' for r, k in reasons)}); "
                       f"see {out / 'failures.csv'}")


def _open_partial(partial: Path, config: ExtractConfig, described: dict[str, Any]) -> dict:
    """Reuse ``.partial`` when it belongs to the same job (see ``_check_out``), otherwise start it afresh."""
    job_file = partial / "job.json"
    if job_file.is_file():
        job = _read_record(job_file) or {}
        if job.get("fingerprint") == described["fingerprint"]:
            return job
        logger.warning("%s: unreadable job record; starting over", partial)
    if partial.exists():
        shutil.rmtree(partial)
    manifest = Path(config.out) / "manifest.json"
    if manifest.exists():
        manifest.unlink()  # the old output is being replaced: it is no longer complete
    job = {**described, "run": run_info(source=described["source"])}
    try:
        write_json(job_file, job)
    except OSError as exc:
        raise FacePhiError(f"{config.out}: cannot write the output folder ({exc.strerror or exc})") from None
    return job


def _run_tasks(tasks: list, settings: _MeshSettings, workers: int | None, total: int, done: int, progress: bool) -> None:
    from facephi.utils.progress import progress_bar

    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks))) if tasks else 0
    bar = progress_bar(total=total, initial=done, unit="img", desc="extract", enabled=progress)
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
