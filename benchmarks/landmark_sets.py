"""The face sets of ``landmark_levers.py``: FER+ Train (and its re-meshes at other resolutions), FER+
Valid / Test and web-dev read from `facephi extract` folders, and web-dev re-meshed from FER+-like crops."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class FaceSet:
    """Raw landmarks of one evaluated (or training) set; ``missed`` = labels of photos without a face."""

    name: str
    landmarks: np.ndarray  # [N, 478, 3] raw MediaPipe coordinates
    sizes: np.ndarray  # [N, 2] image width, height
    labels: np.ndarray  # [N] class indices
    votes: np.ndarray | None = None  # [N, 8] FER+ votes (training set only)
    missed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    paths: list[str] | None = None  # image paths relative to the raw folder (web-dev)
    remeshed: list["FaceSet"] = dataclasses.field(default_factory=list)
    """The same faces re-meshed at other resolutions (row by row; a face a re-mesh missed keeps its own)."""


def recrop(web: FaceSet, raw: Path, ferplus: FaceSet, size: int = 48) -> FaceSet:
    """``web`` re-meshed from grey ``size`` × ``size`` crops of its photos in ``raw``, each framed as FER+
    frames its faces (the Train faces' median landmark box: width, height and centre in the image);
    photos whose crop shows no face join ``missed``."""
    from PIL import Image

    from facephi.landmarks.images import load_image
    from facephi.landmarks.mesh import FaceMesher

    low, high = ferplus.landmarks[..., :2].min(1), ferplus.landmarks[..., :2].max(1)
    box_size, box_centre = np.median(high - low, 0), np.median((low + high) / 2, 0)
    found, points = [], []
    with FaceMesher() as mesher:
        for i, path in enumerate(web.paths):
            image = load_image(raw / path)
            frame = np.array([image.rgb.shape[1], image.rgb.shape[0]], dtype=np.float64)
            face_low, face_high = web.landmarks[i, :, :2].min(0) * frame, web.landmarks[i, :, :2].max(0) * frame
            side = float(np.max((face_high - face_low) / box_size))
            corner = (face_low + face_high) / 2 - box_centre * side
            crop = Image.fromarray(image.rgb).convert("L").crop((*np.round(corner), *np.round(corner + side)))
            result = mesher(np.repeat(np.asarray(crop.resize((size, size), Image.BILINEAR))[..., None], 3, axis=2))
            if result.points is not None:
                found.append(i)
                points.append(result.points)
    lost = np.setdiff1d(np.arange(len(web.labels)), found)
    return FaceSet(web.name, np.asarray(points, dtype=np.float32).reshape(-1, 478, 3),
                   np.full((len(found), 2), float(size), np.float32), web.labels[found],
                   missed=np.concatenate([web.missed, web.labels[lost]]))


def failed_labels(root: Path) -> np.ndarray:
    """Class indices of the photos ``facephi extract`` found no face in (their class folder names them)."""
    from facephi.labels import CLASS_TO_INDEX, canonical_class
    from facephi.utils.errors import FacePhiError

    path = root / "failures.csv"
    if not path.is_file():
        raise FacePhiError(f"{path}: missing (is {root} the output of `facephi extract`?)")
    labels = []
    with path.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                labels.append(CLASS_TO_INDEX[canonical_class(row["path"].split("/")[0])])
            except (KeyError, TypeError, AttributeError):
                raise FacePhiError(f"{path}: line {line}: no class folder in {row.get('path')!r}") from None
    return np.asarray(labels, dtype=np.int64)


def remeshed_like(train: FaceSet, root: Path) -> FaceSet:
    """``train``'s faces as the extraction ``root`` (of the same images) meshed them, row by row; a face
    ``root`` did not find keeps ``train``'s own landmarks."""
    from facephi.landmarks.store import LandmarkSet
    from facephi.utils.errors import FacePhiError

    other = LandmarkSet.load(root, drop_invalid=True)
    rows = {sample["path"]: i for i, sample in enumerate(other.samples)}
    found = np.array([rows.get(path, -1) for path in train.paths])
    if (found >= 0).mean() < 0.9:
        raise FacePhiError(f"--resampled {root}: holds only {(found >= 0).sum()} of the {len(found)} Train faces "
                           f"of --data (is it an extraction of the same FER+ folder?)")
    landmarks, sizes = train.landmarks.copy(), train.sizes.copy()
    landmarks[found >= 0], sizes[found >= 0] = other.landmarks[found[found >= 0]], other.sizes[found[found >= 0]]
    return FaceSet(f"{train.name} ({root.name})", landmarks, sizes, train.labels, train.votes, paths=train.paths)


def remesh_shifts(train: FaceSet) -> list[tuple[float, int]]:
    """Per re-mesh of ``train``: (mean |coordinate change| in units of that coordinate's spread across
    Train faces, faces compared), how far it moves the aligned landmarks (faces it did not find left out)."""
    from facephi.landmarks.normalize import Normalizer

    normalizer = Normalizer(align=True).fit(train.landmarks, train.sizes)
    own = normalizer(train.landmarks, train.sizes)
    spread = own.std(0)
    shifts = []
    for other in train.remeshed:
        found = (train.landmarks != other.landmarks).any(axis=(1, 2))
        moved = normalizer(other.landmarks[found], other.sizes[found])
        shifts.append((float((np.abs(own[found] - moved) / spread).mean()), int(found.sum())))
    return shifts


def remesh_options(root: Path) -> str:
    """The resampling options of the extraction ``root`` (its manifest), as command-line flags."""
    from facephi.utils.io import read_json

    options = read_json(root / "manifest.json").get("options", {})
    flags = [f"--{key} {options[key]}" for key in ("upscale", "interpolation", "blur") if key in options]
    return " ".join(flags) or "no resampling"


def load_sets(data: Path, web: Path, resampled: list[Path] = ()) -> tuple[FaceSet, list[FaceSet]]:
    """FER+ Train (with its ``resampled`` re-meshes); FER+ Valid, FER+ Test and web-dev (every labelled
    photo) as evaluated sets."""
    from facephi.landmarks.store import LandmarkSet

    ferplus = LandmarkSet.load(data, drop_invalid=True)
    web_set = LandmarkSet.load(web)

    def face_set(name: str, source: Any, idx: np.ndarray, missed: np.ndarray | None = None) -> FaceSet:
        votes = None if source.votes is None else source.votes[idx]
        return FaceSet(name, source.landmarks[idx], source.sizes[idx], source.labels[idx], votes,
                       np.zeros(0, dtype=np.int64) if missed is None else missed)

    evaluated = [face_set(f"FER+ {split.capitalize()}", ferplus, ferplus.select(split)) for split in ("valid", "test")]
    web_faces = np.flatnonzero(web_set.labels >= 0)
    evaluated.append(face_set("web-dev", web_set, web_faces, failed_labels(web)))
    evaluated[-1].paths = [web_set.samples[i]["path"] for i in web_faces]
    train_rows = ferplus.select("train")
    train = face_set("FER+ Train", ferplus, train_rows)
    train.paths = [ferplus.samples[i]["path"] for i in train_rows]
    train.remeshed = [remeshed_like(train, root) for root in resampled]
    return train, evaluated
