"""`LandmarkSet`: the reader of the interchange format written by ``facephi extract``."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from facephi.labels import CLASS_TO_INDEX, CLASSES
from facephi.presets import NUM_LANDMARKS
from facephi.landmarks.validate import REASONS, problem_codes
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

CARVE_FRACTION = 0.1
"""Fraction of ``train`` carved out for each missing standard split (``valid``, ``test``)."""
SPLIT_SEED = 0
"""Seed of the carved splits for every facephi command, whatever the training seed, so that a
test part carved from ``train`` never leaks into an encoder's or an LLM's training."""
SUBSET_POLICIES = ("random", "balanced")
"""How :meth:`LandmarkSet.select` keeps ``limit`` samples: a seeded random draw, or class-balanced."""
REQUIRED_COLUMNS = ("index", "path", "label", "split", "width", "height")
ALL_SPLITS = "all"
"""The split name of :meth:`LandmarkSet.select` meaning every sample, whatever its split (a dataset
used only for evaluation, e.g. a folder of photos of another domain)."""


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
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> faces left out by load(drop_invalid=True)

    @classmethod
    def load(cls, root: str | Path, drop_invalid: bool = False, *, check_faces: bool = True) -> "LandmarkSet":
        """Load and validate ``root/landmarks.npy`` and ``root/samples.csv``.

        ``FacePhiError`` (one line naming the file and the line numbers or sample indices) when a file
        is missing or unreadable, ``samples.csv`` is not UTF-8 or has malformed rows (wrong number of
        fields, non-numeric index / width / height, unknown label), an image width or height is not a
        positive finite number, or faces are refused by :mod:`facephi.landmarks.validate` (non-finite,
        all zero, collapsed to a point or a line in x-y). With ``drop_invalid=True`` such faces are
        left out instead (file errors still fail): positions in the returned set are the kept rows
        (their ``index`` column keeps the file's numbering), ``dropped`` counts them by reason and a
        warning is logged. ``check_faces=False`` skips the face check, for callers that refuse bad
        faces one by one (``facephi predict``).
        """
        root = Path(root)
        npy, csv_path = root / "landmarks.npy", root / "samples.csv"
        for path in (npy, csv_path):
            if not path.is_file():
                raise FacePhiError(f"{path}: missing (is {root} the output of `facephi extract`?)")
        try:
            landmarks = np.load(npy, allow_pickle=False, mmap_mode=None)
        except (OSError, ValueError, EOFError) as exc:
            raise FacePhiError(f"{npy}: unreadable ({exc})") from None
        if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 3):
            raise FacePhiError(f"{npy}: shape {landmarks.shape}, expected [N, {NUM_LANDMARKS}, 3]")
        if landmarks.dtype.kind not in "fiu":
            raise FacePhiError(f"{npy}: dtype {landmarks.dtype}, expected float landmarks")
        samples, columns, lines = _read_samples(csv_path)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise FacePhiError(f"{csv_path}: missing columns {', '.join(missing)}")
        if len(samples) != len(landmarks):
            raise FacePhiError(f"{csv_path}: {len(samples)} rows but {npy.name} has {len(landmarks)} faces")
        labels, sizes, votes = _parse_samples(csv_path, samples, columns, lines)
        splits = np.array([row["split"] for row in samples], dtype=str)
        data = cls(root, landmarks.astype(np.float32, copy=False), samples, labels, splits, sizes, votes)
        if not check_faces:
            return data
        codes = problem_codes(data.landmarks)
        bad = np.flatnonzero(codes)
        if len(bad) == 0:
            return data
        by_reason = {REASONS[code - 1]: bad[codes[bad] == code] for code in np.unique(codes[bad]).tolist()}
        if not drop_invalid:
            described = "; ".join(f"{reason} at {_first_few(found, 'sample')}" for reason, found in by_reason.items())
            raise FacePhiError(f"{npy}: {len(bad)} invalid face{'s' * (len(bad) > 1)}: {described} "
                               "(re-extract them, or load with drop_invalid=True to leave them out)")
        dropped = {reason: len(found) for reason, found in by_reason.items()}
        logger.warning("%s: left out %d invalid faces of %d (%s)", root, len(bad), len(data),
                       ", ".join(f"{reason}: {n}" for reason, n in dropped.items()))
        keep = np.flatnonzero(codes == 0)
        return cls(root, data.landmarks[keep], [samples[i] for i in keep], labels[keep], splits[keep], sizes[keep],
                   None if votes is None else votes[keep], dropped)

    def __len__(self) -> int:
        return len(self.samples)

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of one split (int64, ascending)."""
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def default_eval_split(self) -> str:
        """The split an evaluation takes when none is named: ``"all"`` for a dataset whose samples all
        share one split (a folder of photos without split folders: nothing of it is for training), else
        ``"test"`` (the dataset's own, or the part carved from ``train``)."""
        return ALL_SPLITS if len(np.unique(self.splits)) <= 1 else "test"

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

    def select(self, split: str, limit: int | None = None, policy: str = "random",
               seed: int | Sequence[int] = 0) -> np.ndarray:
        """Sorted int64 positions of the labelled samples of ``split``, optionally a subset of ``limit``.

        ``train`` / ``valid`` / ``test`` are those of ``standard_splits(SPLIT_SEED)`` (never dependent
        on the training seed); ``"all"`` (:data:`ALL_SPLITS`) is every sample; any other name is the
        dataset's own split. Unlabelled samples are left
        out (logged); ``FacePhiError`` when none is labelled. ``limit`` (``None``: all) keeps, by
        ``policy``: ``"random"``, ``np.sort(np.random.default_rng(seed).choice(labelled, limit,
        replace=False))``; ``"balanced"``, :func:`balanced_subset` (classes as even as the data allow).
        """
        if policy not in SUBSET_POLICIES:
            raise FacePhiError(f"subset policy must be one of {', '.join(SUBSET_POLICIES)}, got {policy!r}")
        if limit is not None and limit <= 0:
            raise FacePhiError(f"the sample limit must be positive, got {limit}")
        if split in ("train", "valid", "test"):
            indices = np.asarray(self.standard_splits(SPLIT_SEED)[split], dtype=np.int64)
        elif split == ALL_SPLITS:
            indices = np.arange(len(self), dtype=np.int64)
        else:
            indices = self.indices(split)
        labelled = indices[self.labels[indices] >= 0]
        if len(labelled) < len(indices):
            logger.warning("%s: split %r: %d unlabelled samples left out", self.root, split, len(indices) - len(labelled))
        if len(labelled) == 0:
            raise FacePhiError(f"{self.root}: split {split!r} has no labelled sample")
        if limit is None or limit >= len(labelled):
            return labelled
        if policy == "random":
            return np.sort(np.random.default_rng(seed).choice(labelled, size=limit, replace=False)).astype(np.int64)
        return labelled[balanced_subset(self.labels[labelled], limit, seed)]


def balanced_subset(labels: np.ndarray, size: int | None, seed: int | Sequence[int]) -> np.ndarray:
    """Up to ``size`` positions of ``labels``, as even across classes as the data allows.

    Classes are visited round-robin, each in a seeded random order, so a class smaller than
    its share is kept whole and the remainder is spread evenly over the larger ones. Returns
    sorted positions; ``None`` or a size >= ``len(labels)`` keeps everything.
    """
    labels = np.asarray(labels)
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    taken = np.zeros(len(pools), dtype=np.int64)
    remaining = size
    while remaining > 0:
        open_pools = [i for i, pool in enumerate(pools) if taken[i] < len(pool)]
        share, extra = divmod(remaining, len(open_pools))
        for rank, i in enumerate(open_pools):
            add = min(share + (rank < extra), len(pools[i]) - taken[i])
            taken[i] += add
            remaining -= add
    return np.sort(np.concatenate([pool[:n] for pool, n in zip(pools, taken)]))


def _label_index(label: str) -> int:
    if not label:
        return -1
    if label not in CLASS_TO_INDEX:
        raise ValueError(f"unknown label {label!r}")
    return CLASS_TO_INDEX[label]


def _first_few(values: Sequence[int] | np.ndarray, noun: str, shown: int = 5) -> str:
    """``"lines 2, 5"`` / ``"samples 3, 4, 9, 12, 20 and 7 more (12 in all)"``."""
    values = [int(v) for v in values]
    text = f"{noun}{'s' * (len(values) > 1)} {', '.join(map(str, values[:shown]))}"
    return text + (f" and {len(values) - shown} more ({len(values)} in all)" if len(values) > shown else "")


def _read_samples(csv_path: Path) -> tuple[list[dict[str, str]], list[str], list[int]]:
    """(rows, header, line number of each row) of ``samples.csv``; ``FacePhiError`` naming the line
    that is not UTF-8 or has a wrong number of fields (blank lines are skipped)."""
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        raise FacePhiError(f"{csv_path}: unreadable ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FacePhiError(f"{csv_path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                           "save the file as UTF-8") from None
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    samples: list[dict[str, str]] = []
    lines: list[int] = []
    try:
        header = next(reader, [])
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise FacePhiError(f"{csv_path}: line {reader.line_num}: {len(row)} fields, "
                                   f"the header has {len(header)}")
            samples.append(dict(zip(header, row)))
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise FacePhiError(f"{csv_path}: line {reader.line_num}: malformed CSV ({exc})") from None
    return samples, header, lines


def _parse_samples(csv_path: Path, samples: list[dict[str, str]], columns: list[str],
                   lines: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(labels, sizes, votes) of the rows; ``FacePhiError`` naming the offending line(s)."""
    vote_cols = [f"votes_{name}" for name in CLASSES]
    has_votes = all(c in columns for c in vote_cols)
    labels = np.empty(len(samples), dtype=np.int64)
    sizes = np.empty((len(samples), 2), dtype=np.float64)
    votes = np.empty((len(samples), len(CLASSES)), dtype=np.float32) if has_votes else None
    for i, (row, line) in enumerate(zip(samples, lines)):
        column = "index"
        try:
            if int(row["index"]) != i:
                raise FacePhiError(f"{csv_path}: line {line}: index {row['index']}, expected {i} "
                                   "(indices must be 0..N-1 in order)")
            labels[i] = _label_index(row["label"])
            for k, column in enumerate(("width", "height")):
                sizes[i, k] = float(row[column])
            if votes is not None:
                for k, column in enumerate(vote_cols):
                    votes[i, k] = float(row[column])
        except ValueError as exc:
            problem = str(exc) if str(exc).startswith("unknown label") else f"{column} {row[column]!r} is not a number"
            raise FacePhiError(f"{csv_path}: line {line}: {problem}") from None
    with np.errstate(over="ignore"):
        sizes = sizes.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(sizes).all(axis=1) | (sizes <= 0).any(axis=1))
    if len(bad):
        raise FacePhiError(f"{csv_path}: image width / height must be positive finite numbers; "
                           f"not so at {_first_few([lines[i] for i in bad], 'line')}")
    return labels, sizes, votes
