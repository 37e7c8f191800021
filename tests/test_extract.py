"""Extraction with the real MediaPipe FaceMesh: example photos, bad-input corpus, resume, CLI errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facephi.cli import main
from facephi.landmarks import extract as extract_module
from facephi.landmarks.extract import ExtractConfig, extract
from facephi.landmarks.mesh import FaceMesher, MeshResult
from facephi.landmarks.store import LandmarkSet

DATA_FILES = ("landmarks.npy", "samples.csv", "failures.csv")


@pytest.fixture(scope="module")
def mesher() -> FaceMesher:
    with FaceMesher() as m:
        yield m


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_example_images_give_478x3_for_every_image(example_images: Path, tmp_path: Path) -> None:
    result = extract(ExtractConfig(example_images, tmp_path / "out", workers=1), progress=False)
    ds = LandmarkSet.load(tmp_path / "out")
    assert ds.landmarks.shape == (10, 478, 3) and ds.landmarks.dtype == np.float32
    assert np.isfinite(ds.landmarks).all()
    xy = ds.landmarks[..., :2]  # fractions of the image: the faces lie inside the frame
    assert (xy > -0.1).all() and (xy < 1.1).all() and (np.median(xy, axis=1) > 0.2).all()
    assert [s["path"] for s in ds.samples] == sorted(p.name for p in example_images.glob("*.jpg"))
    assert all(s["label"] == s["path"].rsplit("_", 1)[0] for s in ds.samples)
    assert (ds.sizes == 350).all()
    assert read_csv(tmp_path / "out" / "failures.csv") == []
    assert result.manifest["counts"] == {"records": 10, "extracted": 10, "failed": 0, "skipped_by_reader": {}}
    assert not (tmp_path / "out" / ".partial").exists()


def test_padding_retry_maps_points_back_to_the_original_frame(example_images: Path, mesher: FaceMesher) -> None:
    rgb = np.asarray(Image.open(example_images / "happiness_1.jpg").convert("RGB"))
    direct = mesher.process(rgb)[0]
    framed = mesher._process_padded(rgb)[0]
    # The same face seen smaller inside a border: x/y agree to about a pixel, z has the same scale
    # (without the mapping, x/y would be off by ~0.1 and z shrunk by the factor 1.5).
    assert np.abs(framed[:, :2] - direct[:, :2]).mean() < 0.006
    assert framed[:, 2].std() == pytest.approx(direct[:, 2].std(), rel=0.05)


def test_no_face_retries_with_border_and_keeps_the_largest_face() -> None:
    small = np.zeros((478, 3), np.float32) + [0.5, 0.5, 0.0]
    small[:2, :2] = [[0.4, 0.4], [0.6, 0.6]]
    large = np.zeros((478, 3), np.float32) + [0.5, 0.5, 0.1]
    large[:2, :2] = [[0.3, 0.3], [0.7, 0.7]]

    class FakeMesher(FaceMesher):
        def __init__(self) -> None:  # no MediaPipe: only the retry / selection logic
            self.padding = 0.25
            self.shapes: list[tuple[int, ...]] = []

        def process(self, rgb: np.ndarray) -> list[np.ndarray]:
            self.shapes.append(rgb.shape)
            return [] if len(self.shapes) == 1 else [small, large]

    fake = FakeMesher()
    result = fake(np.zeros((40, 80, 3), np.uint8))
    assert fake.shapes == [(40, 80, 3), (60, 120, 3)]  # 25 % border on each side
    assert isinstance(result, MeshResult) and result.faces == 2 and result.padded
    # large's padded-frame x 0.3 → (0.3 * 120 - 20) / 80 = 0.2; y 0.3 → (0.3 * 60 - 10) / 40 = 0.2
    np.testing.assert_allclose(result.points[0, :2], [0.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(result.points[0, 2], 0.1 * 120 / 80, atol=1e-6)


def make_bad_corpus(src: Path, faces: Path) -> dict[str, str]:
    """A folder source mixing good, awkward and broken files; returns the expected failure reasons."""
    src.mkdir()
    face = Image.open(faces / "happiness_1.jpg").convert("RGB")
    shutil.copy(faces / "happiness_1.jpg", src / "ok.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 255).point(lambda v: v))
    rgba.save(src / "rgba.png")
    grey16 = (np.asarray(face.convert("L")).astype(np.uint16) * 257)
    Image.fromarray(grey16).save(src / "grey16.png")
    assert Image.open(src / "grey16.png").mode.startswith("I")
    face.resize((3000, 3000)).save(src / "big.jpg", quality=80)
    Image.new("RGB", (1, 1)).save(src / "tiny.png")
    Image.new("RGB", (200, 160), (128, 128, 128)).save(src / "blank.png")
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("not an image at all\n")
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    data = (faces / "sadness_1.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 3])
    expected = {
        "tiny.png": "image too small", "blank.png": "no face", "empty.jpg": "empty file",
        "text.png": "not an image", "corrupt.jpg": "corrupt image", "truncated.jpg": "corrupt image",
        "missing.jpg": "missing file",
    }
    names = ["ok.jpg", "rgba.png", "grey16.png", "big.jpg", *expected]
    (src / "labels.csv").write_text("file,emotion\n" + "".join(f"{n},happy\n" for n in names))
    return expected


def test_bad_inputs_become_failures_without_stopping_the_run(example_images: Path, tmp_path: Path) -> None:
    expected = make_bad_corpus(tmp_path / "src", example_images)
    result = extract(ExtractConfig(tmp_path / "src", tmp_path / "out", workers=1), progress=False)
    samples = {s["path"]: s for s in read_csv(tmp_path / "out" / "samples.csv")}
    assert sorted(samples) == ["big.jpg", "grey16.png", "ok.jpg", "rgba.png"]
    assert (samples["big.jpg"]["width"], samples["big.jpg"]["height"]) == ("3000", "3000")
    failures = {f["path"]: f for f in read_csv(tmp_path / "out" / "failures.csv")}
    assert {p: f["reason"] for p, f in failures.items()} == expected
    assert all(f["detail"] for f in failures.values())
    assert result.manifest["failures"] == {
        "corrupt image": 2, "empty file": 1, "image too small": 1, "missing file": 1, "no face": 1, "not an image": 1,
    }
    # The big image was downscaled before the mesh, yet its landmarks match the original photo's.
    ds = LandmarkSet.load(tmp_path / "out")
    by_path = {s["path"]: ds.landmarks[int(s["index"])] for s in ds.samples}
    assert np.abs(by_path["big.jpg"][:, :2] - by_path["ok.jpg"][:, :2]).max() < 0.02
    assert np.abs(by_path["grey16.png"][:, :2] - by_path["ok.jpg"][:, :2]).max() < 0.03


def test_affectnet_face_box_is_cropped_with_margin(example_images: Path, tmp_path: Path) -> None:
    canvas = Image.new("RGB", (900, 600), (30, 30, 30))
    canvas.paste(Image.open(example_images / "surprise_1.jpg"), (500, 150))
    (tmp_path / "src" / "7").mkdir(parents=True)
    canvas.save(tmp_path / "src" / "7" / "a.jpg")
    (tmp_path / "src" / "training.csv").write_text(
        "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
        "7/a.jpg,550,200,250,250,,3,0.4,0.8\n"
    )
    extract(ExtractConfig(tmp_path / "src", tmp_path / "out", workers=1, crop_margin=0.2), progress=False)
    [row] = read_csv(tmp_path / "out" / "samples.csv")
    assert (row["label"], row["valence"], row["arousal"]) == ("surprise", "0.4", "0.8")
    assert (row["width"], row["height"]) == ("350", "350")  # 250 + 2 * 0.2 * 250
    assert np.isfinite(np.load(tmp_path / "out" / "landmarks.npy")).all()


def test_interrupted_run_resumes_to_identical_output(
    example_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    names = ["anger_1.jpg", "fear_1.jpg", "happiness_2.jpg", "neutral_2.jpg", "sadness_1.jpg"]
    for name in names:
        shutil.copy(example_images / name, src / name)
    (src / "broken.jpg").write_bytes(b"garbage")
    rows = [f"{n},{n.split('_')[0]}" for n in names] + ["broken.jpg,sad"]
    (src / "labels.csv").write_text("file,emotion\n" + "\n".join(rows) + "\n")

    def config(out: str, workers: int) -> ExtractConfig:
        return ExtractConfig(src, tmp_path / out, workers=workers, chunk_size=1)

    extract(config("reference", 1), progress=False)

    real_process_chunk, real_run_tasks = extract_module._process_chunk, extract_module._run_tasks
    calls: list[int] = []

    def dying_process_chunk(task):  # the run is killed while working on its third chunk
        calls.append(task[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_process_chunk(task)

    monkeypatch.setattr(extract_module, "_process_chunk", dying_process_chunk)
    with pytest.raises(KeyboardInterrupt):
        extract(config("resumed", 1), progress=False)
    partial = tmp_path / "resumed" / ".partial"
    assert sorted(p.name for p in partial.glob("chunk_*.json")) == ["chunk_000000.json", "chunk_000001.json"]
    assert not (tmp_path / "resumed" / "manifest.json").exists()

    resumed_tasks: list[int] = []

    def recording_run_tasks(tasks, *args, **kwargs):
        resumed_tasks.extend(task[0] for task in tasks)
        return real_run_tasks(tasks, *args, **kwargs)

    monkeypatch.setattr(extract_module, "_process_chunk", real_process_chunk)
    monkeypatch.setattr(extract_module, "_run_tasks", recording_run_tasks)
    extract(config("resumed", 2), progress=False)  # resume in two worker processes
    assert resumed_tasks == [2, 3, 4, 5]  # finished chunks are reused, not recomputed
    for name in DATA_FILES:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    reference = (tmp_path / "reference" / "manifest.json").read_text()
    resumed = (tmp_path / "resumed" / "manifest.json").read_text()
    assert resumed.split('"run"')[0] == reference.split('"run"')[0]
    assert not partial.exists()


def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["extract", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "missing" in err
    with pytest.raises(SystemExit) as exc:
        main(["extract", str(tmp_path), "--out", str(tmp_path / "out"), "--format", "kaggle"])
    assert exc.value.code != 0
    assert main(["extract", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "cannot detect" in capsys.readouterr().err
