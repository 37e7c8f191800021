"""`LandmarkSet`: loading the interchange format, consistency errors, standard splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from facephi.labels import CLASSES
from facephi.landmarks.store import LandmarkSet
from facephi.utils.errors import FacePhiError
from facephi.utils.io import save_npy


def write_set(root: Path, labels: list[str], splits: list[str], votes: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    save_npy(root / "landmarks.npy", np.random.default_rng(0).random((n, 478, 3), dtype=np.float32))
    columns = ["index", "path", "label", "split", "width", "height", "faces", "padded"]
    columns += [f"votes_{c}" for c in CLASSES] if votes else []
    with open(root / "samples.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for i, (label, split) in enumerate(zip(labels, splits)):
            row = [i, f"img{i}.png", label, split, 48 + i, 40, 1, 0]
            writer.writerow(row + ([i % 3] * 8 if votes else []))
    return root


def test_load_parses_labels_splits_sizes_votes(tmp_path: Path) -> None:
    ds = LandmarkSet.load(write_set(tmp_path, ["happiness", "", "contempt"], ["train", "valid", "test"], votes=True))
    assert len(ds) == 3 and ds.landmarks.shape == (3, 478, 3) and ds.landmarks.dtype == np.float32
    assert ds.labels.tolist() == [1, -1, 7] and ds.labels.dtype == np.int64
    assert ds.splits.tolist() == ["train", "valid", "test"]
    np.testing.assert_array_equal(ds.sizes, [[48, 40], [49, 40], [50, 40]])
    assert ds.votes is not None and ds.votes.shape == (3, 8) and ds.votes[2, 0] == 2
    assert ds.indices("valid").tolist() == [1]
    assert ds.samples[0]["path"] == "img0.png"


def test_votes_are_none_without_vote_columns(tmp_path: Path) -> None:
    assert LandmarkSet.load(write_set(tmp_path, ["anger"], ["train"])).votes is None


def test_missing_or_inconsistent_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(FacePhiError, match="landmarks.npy: missing"):
        LandmarkSet.load(tmp_path)
    root = write_set(tmp_path / "a", ["anger", "fear"], ["train", "train"])
    save_npy(root / "landmarks.npy", np.zeros((3, 478, 3), np.float32))
    with pytest.raises(FacePhiError, match="2 rows but landmarks.npy has 3"):
        LandmarkSet.load(root)
    save_npy(root / "landmarks.npy", np.zeros((2, 468, 3), np.float32))
    with pytest.raises(FacePhiError, match="expected \\[N, 478, 3\\]"):
        LandmarkSet.load(root)
    root = write_set(tmp_path / "b", ["bored"], ["train"])
    with pytest.raises(FacePhiError, match="unknown label 'bored'"):
        LandmarkSet.load(root)


def test_standard_splits_use_own_splits_when_complete(tmp_path: Path) -> None:
    ds = LandmarkSet.load(write_set(tmp_path, ["anger"] * 4, ["train", "test", "valid", "train"]))
    splits = ds.standard_splits(seed=3)
    assert {k: v.tolist() for k, v in splits.items()} == {"train": [0, 3], "valid": [2], "test": [1]}


def test_standard_splits_carve_seeded_stratified_parts_of_train(tmp_path: Path) -> None:
    labels = ["happiness"] * 60 + ["sadness"] * 30 + [""] * 10
    ds = LandmarkSet.load(write_set(tmp_path, labels, ["train"] * 100))
    splits = ds.standard_splits(seed=0)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [80, 10, 10]
    everything = np.concatenate(list(splits.values()))
    assert sorted(everything.tolist()) == list(range(100))  # disjoint and complete
    for name in ("valid", "test"):  # stratified: 10 % of each class
        assert np.bincount(ds.labels[splits[name]] + 1, minlength=9)[[0, 2, 3]].tolist() == [1, 6, 3]
    again = ds.standard_splits(seed=0)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    other = ds.standard_splits(seed=1)
    assert not np.array_equal(splits["valid"], other["valid"])


def test_standard_splits_of_a_tiny_set_still_give_one_sample_per_carved_split(tmp_path: Path) -> None:
    labels = ["happiness", "happiness", "neutral", "neutral", "neutral", "anger", "fear", "sadness", "disgust", "surprise"]
    ds = LandmarkSet.load(write_set(tmp_path, labels, ["train"] * 10))
    splits = ds.standard_splits(seed=0)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [8, 1, 1]
    carved = sorted(ds.labels[np.concatenate([splits["valid"], splits["test"]])].tolist())
    assert carved == [CLASSES.index("neutral")] * 2  # both from the largest class, 3 neutral faces
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(10))


# ------------------------------------------------------------------ validation at load

def test_a_nan_landmark_is_refused_with_its_sample_index(tmp_path: Path) -> None:
    root = write_set(tmp_path, ["anger"] * 4, ["train"] * 4)
    landmarks = np.load(root / "landmarks.npy")
    landmarks[2, 100, 1] = np.nan
    save_npy(root / "landmarks.npy", landmarks)
    with pytest.raises(FacePhiError, match=r"landmarks.npy: 1 invalid face: non-finite .* at sample 2 "):
        LandmarkSet.load(root)


def test_an_all_zero_face_and_collapsed_faces_are_refused(tmp_path: Path) -> None:
    root = write_set(tmp_path, ["anger"] * 8, ["train"] * 8)
    landmarks = np.load(root / "landmarks.npy")
    landmarks[1] = 0
    landmarks[3] = 0.5  # one point
    landmarks[4, :, 1] = 0.3  # a horizontal line
    save_npy(root / "landmarks.npy", landmarks)
    with pytest.raises(FacePhiError) as info:
        LandmarkSet.load(root)
    message = str(info.value)
    assert "\n" not in message and "3 invalid faces" in message
    assert "all landmarks are zero at sample 1;" in message
    assert "collapsed to a point in x-y at sample 3" in message and "collapsed to a line in x-y at sample 4" in message


def test_many_bad_faces_are_summarised(tmp_path: Path) -> None:
    root = write_set(tmp_path, ["anger"] * 10, ["train"] * 10)
    save_npy(root / "landmarks.npy", np.zeros((10, 478, 3), np.float32))
    with pytest.raises(FacePhiError, match=r"at samples 0, 1, 2, 3, 4 and 5 more \(10 in all\)"):
        LandmarkSet.load(root)


def test_real_mediapipe_faces_and_random_faces_pass() -> None:
    from facephi.landmarks.images import load_image
    from facephi.landmarks.mesh import FaceMesher
    from facephi.landmarks.validate import face_problems

    real = Path(__file__).resolve().parents[1] / "examples" / "images" / "happiness_1.jpg"
    with FaceMesher() as mesher:
        points = mesher(load_image(real).rgb).points
    assert points is not None and face_problems(points) == [None]
    assert face_problems(np.random.default_rng(0).random((5, 478, 3), dtype=np.float32)) == [None] * 5
    wide = points.copy()
    wide[:, 0] *= 0.02  # the same face in an image 50 times wider
    assert face_problems(wide) == [None]


def test_drop_invalid_drops_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_set(tmp_path, ["anger", "fear", "happiness", "sadness", "neutral"], ["train"] * 5, votes=True)
    landmarks = np.load(root / "landmarks.npy")
    landmarks[1, 0, 0] = np.inf
    landmarks[3] = 0
    save_npy(root / "landmarks.npy", landmarks)
    with caplog.at_level("WARNING"):
        ds = LandmarkSet.load(root, drop_invalid=True)
    assert len(ds) == 3 and ds.landmarks.shape == (3, 478, 3)
    assert ds.dropped == {"non-finite landmarks (NaN or inf)": 1, "all landmarks are zero": 1}
    assert [row["path"] for row in ds.samples] == ["img0.png", "img2.png", "img4.png"]
    assert ds.labels.tolist() == [CLASSES.index(c) for c in ("anger", "happiness", "neutral")]
    np.testing.assert_array_equal(ds.sizes[:, 0], [48, 50, 52])
    assert ds.votes is not None and ds.votes[:, 0].tolist() == [0, 2, 1]
    np.testing.assert_array_equal(ds.landmarks[1], landmarks[2])
    assert "left out 2 invalid faces of 5" in caplog.text
    assert LandmarkSet.load(write_set(tmp_path / "good", ["anger"], ["train"])).dropped == {}


def test_samples_csv_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    root = write_set(tmp_path, ["anger"] * 3, ["train"] * 3)
    text = (root / "samples.csv").read_bytes()
    (root / "samples.csv").write_bytes(text.replace(b"img1.png", "imgé.png".encode("latin-1")))
    with pytest.raises(FacePhiError, match=r"samples.csv: line 3: not UTF-8"):
        LandmarkSet.load(root)
    with pytest.raises(FacePhiError, match=r"samples.csv: line 3: not UTF-8"):
        LandmarkSet.load(root, drop_invalid=True)  # file errors are never dropped


def _rewrite_row(root: Path, row: int, column: str, value: str) -> None:
    with open(root / "samples.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    rows[row + 1][rows[0].index(column)] = value
    with open(root / "samples.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.mark.parametrize("column, value, message", [
    ("width", "0", r"positive finite numbers; not so at line 4$"),
    ("height", "-3", r"positive finite numbers; not so at line 4$"),
    ("width", "nan", r"positive finite numbers; not so at line 4$"),
    ("width", "wide", r"line 4: width 'wide' is not a number"),
    ("index", "x", r"line 4: index 'x' is not a number"),
    ("index", "7", r"line 4: index 7, expected 2"),
    ("label", "bored", r"line 4: unknown label 'bored'"),
])
def test_bad_rows_are_errors_naming_the_line(tmp_path: Path, column: str, value: str, message: str) -> None:
    root = write_set(tmp_path, ["anger"] * 4, ["train"] * 4)
    _rewrite_row(root, 2, column, value)
    with pytest.raises(FacePhiError, match=message):
        LandmarkSet.load(root)


def test_several_bad_sizes_and_wrong_field_counts(tmp_path: Path) -> None:
    root = write_set(tmp_path, ["anger"] * 4, ["train"] * 4)
    _rewrite_row(root, 0, "width", "0")
    _rewrite_row(root, 3, "height", "inf")
    with pytest.raises(FacePhiError, match=r"not so at lines 2, 5$"):
        LandmarkSet.load(root)
    with open(root / "samples.csv", "a", newline="") as fh:
        fh.write("4,img4.png,anger,train,48\n")
    with pytest.raises(FacePhiError, match=r"samples.csv: line 6: 5 fields, the header has 8"):
        LandmarkSet.load(root)


# ------------------------------------------------------------------ select

def test_select_random_is_the_seeded_formula_within_the_split(tmp_path: Path) -> None:
    labels = (["anger", "fear", ""] * 20)
    splits = ["train"] * 30 + ["test"] * 30
    ds = LandmarkSet.load(write_set(tmp_path, labels, splits))
    test = ds.indices("test")
    labelled = test[ds.labels[test] >= 0]
    assert np.array_equal(ds.select("test"), labelled)  # unlabelled left out
    picked = ds.select("test", limit=7, seed=3)
    assert picked.dtype == np.int64 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, np.sort(np.random.default_rng(3).choice(labelled, size=7, replace=False)))
    assert np.array_equal(picked, ds.select("test", 7, "random", 3))
    assert not np.array_equal(picked, ds.select("test", 7, seed=4))
    assert np.array_equal(ds.select("test", 7, seed=[1, 7, 2]),
                          np.sort(np.random.default_rng([1, 7, 2]).choice(labelled, size=7, replace=False)))
    assert set(picked.tolist()) <= set(labelled.tolist())
    assert np.array_equal(ds.select("test", limit=100), labelled)


def test_select_balanced_evens_classes_and_keeps_a_rare_class_whole(tmp_path: Path) -> None:
    labels = ["happiness"] * 50 + ["sadness"] * 30 + ["contempt"] * 3 + [""] * 5
    ds = LandmarkSet.load(write_set(tmp_path, labels, ["other"] * len(labels)))
    picked = ds.select("other", limit=21, policy="balanced", seed=0)
    counts = np.bincount(ds.labels[picked], minlength=len(CLASSES))
    assert sorted(counts[counts > 0].tolist()) == [3, 9, 9] and counts[CLASSES.index("contempt")] == 3
    assert np.all(np.diff(picked) > 0) and np.all(ds.labels[picked] >= 0)
    assert np.array_equal(picked, ds.select("other", 21, "balanced", 0))
    odd = np.bincount(ds.labels[ds.select("other", 40, "balanced", 1)], minlength=len(CLASSES))
    assert sorted(odd[odd > 0].tolist()) == [3, 18, 19]


def test_select_errors_and_carved_splits(tmp_path: Path) -> None:
    ds = LandmarkSet.load(write_set(tmp_path, ["anger"] * 40 + [""] * 3, ["train"] * 40 + ["extra"] * 3))
    with pytest.raises(FacePhiError, match="split 'extra' has no labelled sample"):
        ds.select("extra")
    with pytest.raises(FacePhiError, match="split 'nowhere' has no labelled sample"):
        ds.select("nowhere")
    with pytest.raises(FacePhiError, match="subset policy must be one of random, balanced"):
        ds.select("train", 5, policy="first")
    carved = ds.standard_splits(0)
    test, train = ds.select("test"), ds.select("train", seed=5)
    assert np.array_equal(test, carved["test"]) and np.array_equal(train, carved["train"])
    assert not set(test.tolist()) & set(train.tolist())
    assert not set(ds.select("test", 2, seed=9).tolist()) & set(ds.select("train", 10, "balanced", 9).tolist())
