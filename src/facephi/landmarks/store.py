"""`LandmarkSet`: the reader of the interchange format written by ``facephi extract``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facephi.labels import CLASS_TO_INDEX, CLASSES
from facephi.landmarks.mesh import NUM_LANDMARKS
from facephi.utils.errors import FacePhiError

CARVE_FRACTION = 0.1
"""Fraction of ``train`` carved out for each missing standard split (``valid``, ``test``)."""
SPLIT_SEED = 0
"""Seed of the carved splits for every facephi command, whatever the training seed, so that a
test part carved from ``train`` never leaks into an encoder's or an LLM's training."""


@dataclass
class LandmarkSet:
    """An extracted dataset: raw landmarks plus the ``samples.csv`` rows describing them."""

    root: Path
    landmarks: np.ndarray  # float32 [N, 478, 3], raw MediaPipe coordinates
    samples: list[dict[str, str]]  # rows of samples.csv
    labels: np.ndarray  # int64 [N], index into CLASSES, -1 when unlabelled
    splits: np.ndarray  # str [N]: "train" | "valid" | "test" | other
    sizes: np.ndarray  # float32 [N, 2] image (width, height) in pixels
    votes: np.ndarray | None  # float32 [N, 8] emotion votes in CLASSES order (FER+)

    @classmethod
    def load(cls, root: str | Path) -> "LandmarkSet":
        """Load ``root/landmarks.npy`` and ``root/samples.csv``; ``FacePhiError`` when missing or inconsistent."""
        root = Path(root)
        npy, csv_path = root / "landmarks.npy", root / "samples.csv"
        for path in (npy, csv_path):
            if not path.is_file():
                raise FacePhiError(f"{path}: missing (is {root} the output of `facephi extract`?)")
        try:
            landmarks = np.load(npy, allow_pickle=False, mmap_mode=None)
        except (OSError, ValueError) as exc:
            raise FacePhiError(f"{npy}: unreadable ({exc})") from None
        if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 3):
            raise FacePhiError(f"{npy}: shape {landmarks.shape}, expected [N, {NUM_LANDMARKS}, 3]")
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            samples = list(reader)
            columns = reader.fieldnames or []
        missing = [c for c in ("index", "path", "label", "split", "width", "height") if c not in columns]
        if missing:
            raise FacePhiError(f"{csv_path}: missing columns {', '.join(missing)}")
        if len(samples) != len(landmarks):
            raise FacePhiError(f"{csv_path}: {len(samples)} rows but {npy.name} has {len(landmarks)} faces")
        try:
            if [int(row["index"]) for row in samples] != list(range(len(samples))):
                raise ValueError("indices are not 0..N-1 in order")
            labels = np.array([_label_index(row["label"]) for row in samples], dtype=np.int64)
            sizes = np.array([(float(r["width"]), float(r["height"])) for r in samples], dtype=np.float32)
            vote_cols = [f"votes_{name}" for name in CLASSES]
            votes = (
                np.array([[float(r[c]) for c in vote_cols] for r in samples], dtype=np.float32)
                if all(c in columns for c in vote_cols) else None
            )
        except (KeyError, ValueError) as exc:
            raise FacePhiError(f"{csv_path}: inconsistent content ({exc})") from None
        splits = np.array([row["split"] for row in samples], dtype=str)
        return cls(root, landmarks.astype(np.float32, copy=False), samples, labels, splits, sizes.reshape(-1, 2), votes)

    def __len__(self) -> int:
        return len(self.samples)

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of one split (int64, ascending)."""
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def standard_splits(self, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
        """Train / valid / test indices.

        The dataset's own splits are used where present. When ``valid`` or ``test`` is missing, a
        seeded part of ``train`` (``CARVE_FRACTION`` of it per missing split, stratified by label,
        unlabelled samples forming their own stratum; at least one sample of the largest stratum when
        the set is too small for the fraction) is carved out for it; the same ``seed`` always
        gives the same split. Samples of other splits are not used.
        """
        result = {name: self.indices(name) for name in ("train", "valid", "test")}
        missing = [name for name in ("valid", "test") if len(result[name]) == 0]
        if not missing or len(result["train"]) == 0:
            return result
        rng = np.random.default_rng(seed)
        train = result["train"]
        carved: dict[str, list[np.ndarray]] = {name: [] for name in missing}
        keep: list[np.ndarray] = []
        for label in np.unique(self.labels[train]):
            members = rng.permutation(train[self.labels[train] == label])
            n_carve = int(round(CARVE_FRACTION * len(members)))
            for i, name in enumerate(missing):
                carved[name].append(members[i * n_carve : (i + 1) * n_carve])
            keep.append(members[len(missing) * n_carve :])
        for name in missing:  # a tiny set: a split left empty takes one sample of the largest stratum
            largest = max(range(len(keep)), key=lambda k: len(keep[k]))
            if sum(map(len, carved[name])) == 0 and len(keep[largest]) > 1:
                carved[name].append(keep[largest][:1])
                keep[largest] = keep[largest][1:]
        result["train"] = np.sort(np.concatenate(keep))
        for name in missing:
            result[name] = np.sort(np.concatenate(carved[name])).astype(np.int64)
        return result


def _label_index(label: str) -> int:
    if not label:
        return -1
    if label not in CLASS_TO_INDEX:
        raise ValueError(f"unknown label {label!r}")
    return CLASS_TO_INDEX[label]
