"""Photos of an extracted dataset where no face was found, counted as wrong answers.

``facephi extract`` lists every image without landmarks in ``failures.csv`` (``path, split, reason,
detail``, and ``label`` where the extraction recorded it). An evaluation of the whole of a split
counts them as answers that name no class (the ``none`` column of the confusion matrix): a user who
asks about such a photo gets no emotion back. Their true class is the ``label`` column, else the
label the dataset's reader gives the same path (the source folder of ``manifest.json``, read again:
annotations only, no image is opened).

They cannot be counted (and the evaluation says why, in ``metrics.json``'s ``no_face``) for a
``--limit`` subset, for a split carved out of ``train`` (a failed photo belongs to no carved part),
or when their labels cannot be found.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facephi.labels import CLASS_TO_INDEX, canonical_class
from facephi.landmarks.store import ALL_SPLITS, LandmarkSet
from facephi.utils.errors import FacePhiError

FAILURES_NAME = "failures.csv"


@dataclass
class PhotosWithoutFace:
    """The photos of an evaluated split without a face: their true classes, if they are counted."""

    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """True class index of each counted photo (unlabelled photos are left out, as unlabelled faces are)."""
    reasons: dict[str, int] = field(default_factory=dict)
    """Extraction failure reason -> photos (of the evaluated split)."""
    counted: bool = True
    note: str = ""
    """Why they are not counted (``counted`` False)."""

    @property
    def n(self) -> int:
        return int(sum(self.reasons.values()))

    def to_dict(self) -> dict[str, Any]:
        """The ``no_face`` block of ``metrics.json``."""
        from facephi.labels import CLASSES

        by_class = {name: int((self.labels == k).sum()) for k, name in enumerate(CLASSES)} if self.counted else None
        return {"n": self.n, "counted": self.counted, "by_class": by_class, "reasons": dict(self.reasons),
                "note": self.note}


def _failure_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FacePhiError(f"{path}: unreadable ({exc})") from None
    missing = [c for c in ("path", "split", "reason") if c not in columns]
    if missing:
        raise FacePhiError(f"{path}: missing columns {', '.join(missing)}")
    return rows


def _source_labels(root: Path) -> tuple[dict[str, str] | None, str]:
    """path -> label of the extraction's source as its reader lists it, or (None, why not)."""
    from facephi.landmarks.readers import read_source
    from facephi.utils.io import read_json

    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return None, f"no {manifest_path.name} in {root} names the source folder"
    try:
        manifest = read_json(manifest_path)
        source, reader = Path(manifest["source"]), manifest["reader"]
        keep_ambiguous = bool((manifest.get("options") or {}).get("keep_ambiguous", False))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{manifest_path}: unreadable ({exc})"
    if not source.is_dir():
        return None, f"the source folder {source} of {manifest_path} is not here"
    try:
        listing = read_source(source, reader, keep_ambiguous=keep_ambiguous)
    except FacePhiError as exc:
        return None, f"the source {source} cannot be read again ({exc})"
    return {record.path: record.label for record in listing.records}, ""


def photos_without_face(data: LandmarkSet, split: str, limit: int | None = None) -> PhotosWithoutFace:
    """The photos without a face of ``split`` of ``data`` (see the module docstring)."""
    path = Path(data.root) / FAILURES_NAME
    if not path.is_file():
        return PhotosWithoutFace(note=f"no {FAILURES_NAME} in {data.root}: every photo had a face, as far as known")
    rows = _failure_rows(path)
    own = set(np.unique(data.splits).tolist())
    carved = split in ("train", "valid", "test") and not {"valid", "test"} <= own
    if split != ALL_SPLITS:
        rows = [row for row in rows if row["split"] == split]
    reasons = dict(Counter(row["reason"] for row in rows))
    if not rows:
        return PhotosWithoutFace(reasons=reasons)
    if carved:
        return PhotosWithoutFace(reasons=reasons, counted=False,
                                 note=f"split {split!r} is carved out of train: its photos without a face are unknown")
    if limit is not None:
        return PhotosWithoutFace(reasons=reasons, counted=False,
                                 note="a --limit subset of the faces: photos without a face not counted")
    if all("label" in row for row in rows):
        names = [row["label"].strip() for row in rows]
    else:
        listed, why = _source_labels(Path(data.root))
        if listed is None:
            return PhotosWithoutFace(reasons=reasons, counted=False, note=f"their labels are unknown: {why}")
        unknown = [row["path"] for row in rows if row["path"] not in listed]
        if unknown:
            return PhotosWithoutFace(reasons=reasons, counted=False,
                                     note=f"their labels are unknown: {unknown[0]} is not in the source's listing")
        names = [listed[row["path"]] for row in rows]
    try:
        labels = [CLASS_TO_INDEX[canonical_class(name)] for name in names if name]
    except KeyError as exc:
        raise FacePhiError(f"{path}: unknown class {exc}") from None
    return PhotosWithoutFace(np.asarray(labels, dtype=np.int64), reasons)
