"""Dataset readers: FER+, AffectNet and class-folder trees → an ordered list of sample records.

Readers only read annotations and list files; decoding images is the extractor's job, so a bad
image never stops a reader. Record order is deterministic (split order, then the source's own
order or sorted paths), which makes extraction output reproducible.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from facephi.labels import CLASSES, canonical_class
from facephi.utils.errors import FacePhiError

FORMATS: tuple[str, ...] = ("ferplus", "affectnet", "folder")

FERPLUS_DIRS: dict[str, str] = {"FER2013Train": "train", "FER2013Valid": "valid", "FER2013Test": "test"}
FERPLUS_VOTE_ORDER: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
    "unknown", "not_a_face",
)  # column order of FER+ label.csv after the file name and face box

AFFECTNET_FILES: dict[str, str] = {"training.csv": "train", "validation.csv": "valid"}
AFFECTNET_IMAGE_DIRS: tuple[str, ...] = (
    ".", "Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images",
)
AFFECTNET_SKIPPED: dict[int, str] = {8: "affectnet none", 9: "affectnet uncertain", 10: "affectnet no-face"}

SPLIT_SYNONYMS: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "valid", "valid": "valid", "validation": "valid",
    "test": "test", "testing": "test",
}
SPLIT_ORDER: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class SampleRecord:
    """One image to extract.

    ``path`` is relative to the source root (POSIX separators); ``label`` a canonical class name or
    ``""`` when unlabelled; ``box`` an optional face box ``(x, y, w, h)`` in pixels to crop before the
    mesh; ``extra`` additional ``samples.csv`` columns (``votes_<class>``, ``valence``, ``arousal``).
    """

    path: str
    label: str
    split: str
    extra: dict[str, str] = field(default_factory=dict)
    box: tuple[float, float, float, float] | None = None


@dataclass
class SourceListing:
    """What a reader found: the records to extract and the annotated samples it skipped, by reason."""

    reader: str
    records: list[SampleRecord]
    skipped: dict[str, int] = field(default_factory=dict)


def detect_format(source: Path) -> str:
    """Guess the layout of ``source``: FER+ split folders, AffectNet CSVs, or a class-folder tree."""
    if any((source / name / "label.csv").is_file() for name in FERPLUS_DIRS):
        return "ferplus"
    if any((source / name).is_file() for name in AFFECTNET_FILES):
        return "affectnet"
    if (source / "labels.csv").is_file() or any(_subdirs(source)):
        return "folder"
    raise FacePhiError(
        f"{source}: cannot detect the dataset format (no FER2013*/label.csv, training.csv / "
        "validation.csv, labels.csv or class sub-folders); pass --format"
    )


def read_source(source: str | Path, fmt: str = "auto", keep_ambiguous: bool = False) -> SourceListing:
    """List the samples of ``source`` with the reader ``fmt`` (``auto`` detects it)."""
    source = Path(source)
    if not source.exists():
        raise FacePhiError(f"{source}: source does not exist")
    if not source.is_dir():
        raise FacePhiError(f"{source}: source is not a directory")
    if fmt not in ("auto", *FORMATS):
        raise FacePhiError(f"unknown format {fmt!r}; choose one of auto, {', '.join(FORMATS)}")
    try:
        if fmt == "auto":
            fmt = detect_format(source)
        if fmt == "ferplus":
            return read_ferplus(source, keep_ambiguous=keep_ambiguous)
        if fmt == "affectnet":
            return read_affectnet(source)
        return read_folder(source)
    except OSError as exc:
        where = exc.filename or source
        raise FacePhiError(f"{where}: cannot read the dataset ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FacePhiError(f"{source}: cannot read the dataset ({exc})") from None


def ferplus_label(votes: dict[str, int]) -> str:
    """Plurality label of FER+ votes, or ``""`` when ambiguous.

    The label is the emotion with the most votes among the 8 emotions; ambiguous images are those
    whose top count is tied, or where ``unknown + not_a_face`` votes reach the top count.
    """
    counts = [votes[name] for name in CLASSES]
    top = max(counts)
    if top <= 0 or counts.count(top) > 1 or votes["unknown"] + votes["not_a_face"] >= top:
        return ""
    return CLASSES[counts.index(top)]


def read_ferplus(source: Path, keep_ambiguous: bool = False) -> SourceListing:
    """FER+: ``FER2013{Train,Valid,Test}/label.csv`` with ``file,"(x, y, w, h)",`` then 10 vote counts.

    Ambiguous images (see :func:`ferplus_label`) are skipped, or kept unlabelled when
    ``keep_ambiguous``. The 8 emotion votes are kept as ``votes_<class>`` columns in ``CLASSES`` order.
    """
    records: list[SampleRecord] = []
    skipped: Counter[str] = Counter()
    present = [d for d in FERPLUS_DIRS if (source / d / "label.csv").is_file()]
    if not present:
        raise FacePhiError(f"{source}: no FER2013Train|Valid|Test/label.csv found (not a FER+ tree)")
    for folder in present:
        label_csv = source / folder / "label.csv"
        with open(label_csv, newline="", encoding="utf-8") as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row or not row[0].strip():
                    continue
                try:
                    values = [int(float(v)) for v in row[2:12]]
                    if len(values) != 10:
                        raise ValueError(f"{len(values)} vote columns")
                except ValueError as exc:
                    if line_no == 1:
                        continue  # a header line
                    raise FacePhiError(f"{label_csv}:{line_no}: bad vote counts ({exc})") from None
                votes = dict(zip(FERPLUS_VOTE_ORDER, values))
                label = ferplus_label(votes)
                if not label and not keep_ambiguous:
                    skipped["ferplus ambiguous"] += 1
                    continue
                extra = {f"votes_{name}": str(votes[name]) for name in CLASSES}
                records.append(
                    SampleRecord(f"{folder}/{row[0].strip()}", label, FERPLUS_DIRS[folder], extra)
                )
    return SourceListing("ferplus", records, dict(skipped))


def read_affectnet(source: Path) -> SourceListing:
    """AffectNet: ``training.csv`` / ``validation.csv`` (``subDirectory_filePath, face_x, face_y,
    face_width, face_height, facial_landmarks, expression, valence, arousal``).

    Expressions 0–7 map onto ``CLASSES``; 8–10 (none, uncertain, no-face) are skipped and counted.
    Face boxes are kept for cropping; valence and arousal become extra columns.
    """
    records: list[SampleRecord] = []
    skipped: Counter[str] = Counter()
    required = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                "expression", "valence", "arousal")
    files = [(name, split) for name, split in AFFECTNET_FILES.items() if (source / name).is_file()]
    if not files:
        raise FacePhiError(f"{source}: no training.csv or validation.csv found (not an AffectNet tree)")
    image_root: str | None = None
    for name, split in files:
        path = source / name
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise FacePhiError(f"{path}: missing columns {', '.join(missing)}")
            for line_no, row in enumerate(reader, start=2):
                try:
                    expression = int(row["expression"])
                    box = tuple(float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
                except (TypeError, ValueError):
                    raise FacePhiError(f"{path}:{line_no}: bad expression or face box") from None
                if expression in AFFECTNET_SKIPPED:
                    skipped[AFFECTNET_SKIPPED[expression]] += 1
                    continue
                if not 0 <= expression < len(CLASSES):
                    raise FacePhiError(f"{path}:{line_no}: expression {expression} outside 0-10")
                rel = row["subDirectory_filePath"].strip().replace("\\", "/")
                if image_root is None:
                    image_root = next(
                        (d for d in AFFECTNET_IMAGE_DIRS if (source / d / rel).is_file()), "."
                    )
                full = rel if image_root == "." else f"{image_root}/{rel}"
                extra = {"valence": row["valence"].strip(), "arousal": row["arousal"].strip()}
                records.append(SampleRecord(full, CLASSES[expression], split, extra, box))  # type: ignore[arg-type]
    return SourceListing("affectnet", records, dict(skipped))


def read_folder(source: Path) -> SourceListing:
    """A class-folder tree: ``<class>/<image>``, or ``<split>/<class>/<image>`` with split folders
    ``train``, ``val``/``valid``/``validation`` and ``test``; or a flat folder with ``labels.csv``
    (``file,emotion`` or ``file,label``).

    Class names are matched with :func:`facephi.labels.canonical_class` (synonyms such as ``happy``);
    unknown folder names are an error that lists them. Trees without split folders become ``train``.
    """
    subdirs = _subdirs(source)
    if not subdirs and (source / "labels.csv").is_file():
        return SourceListing("folder", _read_labels_csv(source))
    split_dirs = {d: SPLIT_SYNONYMS[d.name.lower()] for d in subdirs if d.name.lower() in SPLIT_SYNONYMS}
    if split_dirs:
        others = [d.name for d in subdirs if d not in split_dirs]
        if others:
            raise FacePhiError(
                f"{source}: mixes split folders ({', '.join(sorted(d.name for d in split_dirs))}) with "
                f"other folders: {', '.join(sorted(others))}"
            )
        ordered = sorted(split_dirs, key=lambda d: (SPLIT_ORDER.index(split_dirs[d]), d.name))
        records = [r for d in ordered for r in _read_class_dirs(source, d, split_dirs[d])]
    elif subdirs:
        records = _read_class_dirs(source, source, "train")
    else:
        raise FacePhiError(f"{source}: no class sub-folders and no labels.csv")
    return SourceListing("folder", records)


def _read_class_dirs(source: Path, parent: Path, split: str) -> list[SampleRecord]:
    classes: dict[Path, str] = {}
    unknown: list[str] = []
    for d in _subdirs(parent):
        try:
            classes[d] = canonical_class(d.name)
        except KeyError:
            unknown.append(d.name)
    if unknown:
        raise FacePhiError(
            f"{parent}: unknown class folder(s) {', '.join(sorted(unknown))}; "
            f"expected the classes {', '.join(CLASSES)} or common synonyms (happy, angry, ...)"
        )
    if not classes:
        raise FacePhiError(f"{parent}: no class sub-folders")
    return [
        SampleRecord(f.relative_to(source).as_posix(), label, split)
        for d, label in sorted(classes.items(), key=lambda kv: kv[0].name)
        for f in _files_below(d)
    ]


def _files_below(folder: Path) -> list[Path]:
    """Files below ``folder`` (recursive, sorted; hidden files and folders and links to folders skipped).
    A folder that cannot be listed raises its ``OSError`` (never skipped without a word)."""
    def fail(exc: OSError) -> None:
        raise exc

    found = []
    for root, dirs, files in os.walk(folder, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(f for f in found if f.is_file())


def _read_labels_csv(source: Path) -> list[SampleRecord]:
    path = source / "labels.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        label_col = next((c for c in ("emotion", "label", "class", "expression") if c in fields), None)
        split_col = "split" if "split" in fields else None
        if "file" not in fields or label_col is None:
            raise FacePhiError(f"{path}: needs a 'file' column and an 'emotion' or 'label' column")
        records = []
        for line_no, row in enumerate(reader, start=2):
            name = (row.get(label_col) or "").strip()
            try:
                label = canonical_class(name) if name else ""
            except KeyError:
                raise FacePhiError(f"{path}:{line_no}: unknown class {name!r}") from None
            split = SPLIT_SYNONYMS.get((row.get(split_col) or "").strip().lower(), "train") if split_col else "train"
            records.append(SampleRecord(row["file"].strip().replace("\\", "/"), label, split))
    return records


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
