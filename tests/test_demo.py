"""`facephi demo` (the README's main command) end to end with tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from facephi.cli import main
from facephi.pipelines.config import DEFAULT_IMAGES
from train_fixtures import write_llm

PHOTOS = ("happiness_1.jpg", "happiness_2.jpg", "sadness_1.jpg", "surprise_1.jpg", "neutral_1.jpg", "neutral_2.jpg",
          "anger_1.jpg")  # two classes with two photos: the carved valid and test splits take one each


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(DEFAULT_IMAGES / name, folder / name)
    labels = [line for line in (DEFAULT_IMAGES / "labels.csv").read_text().splitlines()
              if line.startswith("file") or line.split(",")[0] in PHOTOS]
    (folder / "labels.csv").write_text("\n".join(labels) + "\n")
    return folder


def test_demo_trains_a_miniature_model_then_answers_every_photo(photos: Path, tmp_path: Path, capsys) -> None:
    llm = write_llm(tmp_path / "llm")
    argv = ["demo", "--train-from-scratch", "--images", str(photos), "--work", str(tmp_path / "work"),
            "--llm", str(llm), "--encoder-epochs", "1", "--stage-steps", "1", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "Answering with"):
        assert step in out
    table = [line.split() for line in out.splitlines() if line.split(" ")[0] in PHOTOS]
    assert [row[0] for row in table] == sorted(PHOTOS)
    labels = dict(line.split(",")[:2] for line in (photos / "labels.csv").read_text().splitlines()[1:])
    assert all(row[1] == labels[row[0]] and "ERROR:" not in row for row in table)  # file, true label, ...
    assert all("%" in row for row in table)  # the top probability of likelihood scoring
    named = sum(row[2] == labels[row[0]] for row in table)
    assert f"{named}/{len(PHOTOS)} photos named with their labelled emotion." in out
    assert "facephi serve" in out
    model = tmp_path / "work" / "stage2" / "final"
    assert (model / "projector.safetensors").is_file()

    # A second run reuses every step and answers with the same model.
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "[1/4]" not in again and "[2/4]" not in again and f"Answering with {model}" in again
    # With --model the demo only answers.
    assert main(["demo", "--images", str(photos), "--model", str(model), "--no-progress"]) == 0
    answered = capsys.readouterr().out
    assert "[1/4]" not in answered and f"Answering with {model}" in answered


def test_demo_reports_bad_inputs_in_one_line(photos: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FACEPHI_MODEL", str(tmp_path / "no-shipped-model"))
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for name in PHOTOS[:3]:
        (unreadable / name).write_bytes(b"not an image")
    shutil.copy(photos / "labels.csv", unreadable / "labels.csv")
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(photos, unlabelled)
    (unlabelled / "labels.csv").unlink()
    cases = {
        "no images": ["--images", str(tmp_path / "empty-dir-missing")],
        "no face found in any of the 7 images (4 × missing file, 3 × not an image)": [
            "--train-from-scratch", "--images", str(unreadable), "--work", str(tmp_path / "w")],
        "no-model: not found (--model)": ["--images", str(photos), "--model", str(tmp_path / "no-model")],
        "labels.csv: missing or empty; the miniature training needs": ["--train-from-scratch", "--images",
                                                                        str(unlabelled)],
        "the shipped model is missing": ["--images", str(photos)],
        "encoder_epochs (--encoder-epochs): must be >= 1": ["--encoder-epochs", "0"],
    }
    for expected, flags in cases.items():
        assert main(["demo", *flags, "--no-progress"]) == 2, expected
        err = capsys.readouterr().err
        assert (expected in err or (expected == "no images" and "image folder not found" in err)) \
            and err.count("\n") == 1, (expected, err)
