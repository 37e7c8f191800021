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
