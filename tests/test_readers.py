"""Dataset readers on small fixture trees (annotations only; no image is decoded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facephi.labels import CLASSES
from facephi.landmarks.readers import detect_format, ferplus_label, read_source
from facephi.utils.errors import FacePhiError

# FER+ vote order: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
FERPLUS_ROWS = {
    "FER2013Train": [
        ("a.png", [0, 8, 1, 0, 0, 0, 0, 0, 1, 0]),  # happiness
        ("tie.png", [4, 4, 0, 0, 0, 0, 0, 0, 2, 0]),  # tie → ambiguous
        ("unk.png", [3, 0, 0, 0, 0, 0, 0, 0, 2, 1]),  # unknown + NF (3) reach top (3) → ambiguous
        ("b.png", [0, 0, 7, 3, 0, 0, 0, 0, 0, 0]),  # surprise (FER+ column 3)
    ],
    "FER2013Valid": [("c.png", [0, 0, 0, 6, 0, 0, 4, 0, 0, 0])],  # sadness
    "FER2013Test": [("d.png", [1, 0, 0, 0, 0, 0, 0, 9, 0, 0])],  # contempt
}


def make_ferplus(root: Path) -> Path:
    for folder, rows in FERPLUS_ROWS.items():
        (root / folder).mkdir(parents=True)
        lines = [f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)) for name, votes in rows]
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ferplus_plurality_policy_votes_and_splits(tmp_path: Path) -> None:
    listing = read_source(make_ferplus(tmp_path), "auto")
    assert listing.reader == "ferplus"
    assert [(r.path, r.label, r.split) for r in listing.records] == [
        ("FER2013Train/a.png", "happiness", "train"),
        ("FER2013Train/b.png", "surprise", "train"),
        ("FER2013Valid/c.png", "sadness", "valid"),
        ("FER2013Test/d.png", "contempt", "test"),
    ]
    assert listing.skipped == {"ferplus ambiguous": 2}
    votes = listing.records[1].extra  # b.png: surprise 7, sadness 3 in CLASSES order
    assert list(votes) == [f"votes_{c}" for c in CLASSES]
    assert votes["votes_surprise"] == "7" and votes["votes_sadness"] == "3"
    assert listing.records[2].extra["votes_anger"] == "0" and listing.records[2].extra["votes_fear"] == "4"


def test_ferplus_keep_ambiguous_keeps_them_unlabelled(tmp_path: Path) -> None:
    listing = read_source(make_ferplus(tmp_path), "ferplus", keep_ambiguous=True)
    labels = {r.path.split("/")[1]: r.label for r in listing.records}
    assert labels["tie.png"] == "" and labels["unk.png"] == "" and labels["a.png"] == "happiness"
    assert listing.skipped == {}


def test_ferplus_label_edge_cases() -> None:
    def votes(**kw: int) -> dict[str, int]:
        return {**{c: 0 for c in CLASSES}, "unknown": 0, "not_a_face": 0, **kw}

    assert ferplus_label(votes(fear=5, anger=4, unknown=4)) == "fear"
    assert ferplus_label(votes(fear=5, unknown=3, not_a_face=2)) == ""
    assert ferplus_label(votes(not_a_face=10)) == ""


def make_affectnet(root: Path) -> Path:
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal\n")
    (root / "training.csv").write_text(
        header
        + '1/a.jpg,10,20,100,110,"1;2",1,0.5,0.25\n'
        + '1/b.jpg,0,0,50,50,"",8,0,0\n'
        + '2/c.jpg,0,0,50,50,"",10,-2,-2\n'
        + '2/d.jpg,5,5,60,60,"",6,-0.5,0.75\n'
    )
    (root / "validation.csv").write_text(header + '3/e.jpg,1,2,30,40,"",9,0,0\n3/f.jpg,1,2,30,40,"",7,0.1,0.2\n')
    images = root / "Manually_Annotated_Images" / "1"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"x")
    return root


def test_affectnet_skips_8_to_10_keeps_box_valence_arousal(tmp_path: Path) -> None:
    listing = read_source(make_affectnet(tmp_path))
    assert listing.reader == "affectnet"
    assert [(r.path, r.label, r.split) for r in listing.records] == [
        ("Manually_Annotated_Images/1/a.jpg", "happiness", "train"),
        ("Manually_Annotated_Images/2/d.jpg", "anger", "train"),
        ("Manually_Annotated_Images/3/f.jpg", "contempt", "valid"),
    ]
    assert listing.skipped == {"affectnet none": 1, "affectnet uncertain": 1, "affectnet no-face": 1}
    assert listing.records[0].box == (10.0, 20.0, 100.0, 110.0)
    assert listing.records[1].extra == {"valence": "-0.5", "arousal": "0.75"}


def test_affectnet_missing_columns_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "training.csv").write_text("subDirectory_filePath,expression\n1/a.jpg,1\n")
    with pytest.raises(FacePhiError, match="missing columns.*face_x"):
        read_source(tmp_path, "affectnet")


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_folder_synonyms_and_order(tmp_path: Path) -> None:
    for rel in ("happy/2.jpg", "happy/1.jpg", "Angry/x.png", "surprised/s.jpg", "happy/.hidden.jpg"):
        touch(tmp_path / rel)
    listing = read_source(tmp_path, "auto")
    assert listing.reader == "folder"
    assert [(r.path, r.label, r.split) for r in listing.records] == [
        ("Angry/x.png", "anger", "train"),
        ("happy/1.jpg", "happiness", "train"),
        ("happy/2.jpg", "happiness", "train"),
        ("surprised/s.jpg", "surprise", "train"),
    ]


def test_folder_unknown_class_names_are_listed(tmp_path: Path) -> None:
    for rel in ("happy/1.jpg", "bored/1.jpg", "confused/1.jpg"):
        touch(tmp_path / rel)
    with pytest.raises(FacePhiError, match="unknown class folder.*bored, confused"):
        read_source(tmp_path, "folder")


def test_folder_with_split_subfolders(tmp_path: Path) -> None:
    for rel in ("test/sad/t.jpg", "train/fearful/a.jpg", "val/disgusted/v.jpg"):
        touch(tmp_path / rel)
    listing = read_source(tmp_path)
    assert [(r.label, r.split) for r in listing.records] == [
        ("fear", "train"), ("disgust", "valid"), ("sadness", "test"),
    ]
    touch(tmp_path / "happy" / "x.jpg")
    with pytest.raises(FacePhiError, match="mixes split folders.*happy"):
        read_source(tmp_path)


def test_flat_folder_with_labels_csv(example_images: Path) -> None:
    listing = read_source(example_images)
    assert listing.reader == "folder" and len(listing.records) == 10
    assert listing.records[0].path == "anger_1.jpg" and listing.records[0].label == "anger"


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FacePhiError, match="does not exist"):
        read_source(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FacePhiError, match="not a directory"):
        read_source(tmp_path / "file.txt")
    with pytest.raises(FacePhiError, match="cannot detect"):
        detect_format(tmp_path)
    with pytest.raises(FacePhiError, match="unknown format 'kaggle'"):
        read_source(tmp_path, "kaggle")
