"""Extraction with the real MediaPipe FaceMesh: example photos, bad-input corpus, resume, CLI errors."""

from __future__ import annotations

import csv
import json
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
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json

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


# ----------------------------------------------------------------------------- reuse / refusal / overwrite
def small(src: Path, out: Path, **options) -> ExtractConfig:
    return ExtractConfig(src, out, **{"workers": 1, "limit": 2, **options})


def refuse_reruns(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the extraction ran again")

    monkeypatch.setattr(extract_module, "_run_tasks", no_work)


def test_same_settings_reuse_the_finished_output(
    example_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    first = extract(small(example_images, out), progress=False)
    assert len(first.manifest["fingerprint"]) == 64 and "overwrite" not in first.manifest["options"]
    before = {name: (out / name).read_bytes() for name in (*DATA_FILES, "manifest.json")}
    refuse_reruns(monkeypatch)
    with caplog.at_level("INFO", logger="facephi.landmarks.extract"):
        again = extract(small(example_images, out, workers=3), progress=False)  # workers: not a setting
    assert "already extracted" in caplog.text
    assert again.manifest == json.loads(before["manifest.json"])
    assert {name: (out / name).read_bytes() for name in before} == before


def test_other_settings_are_refused_naming_them_unless_overwrite(example_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extract(small(example_images, out), progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(FacePhiError) as exc:
        extract(small(example_images, out, crop_margin=0.3, max_side=640), progress=False)
    message = str(exc.value)
    assert "\n" not in message and str(out) in message and str(example_images.resolve()) in message
    assert "crop_margin 0.2 → 0.3" in message and "max_side 1280 → 640" in message and "--overwrite" in message
    assert (out / "manifest.json").read_bytes() == before and not (out / ".partial").exists()

    with pytest.raises(FacePhiError, match="limit 2 → 1"):
        extract(ExtractConfig(example_images, out, workers=1, limit=1), progress=False)

    replaced = extract(small(example_images, out, crop_margin=0.3, overwrite=True), progress=False)
    assert replaced.manifest["options"]["crop_margin"] == 0.3
    assert read_json(out / "manifest.json")["options"]["crop_margin"] == 0.3
    assert LandmarkSet.load(out).landmarks.shape == (2, 478, 3)


def test_resampling_meshes_another_image_and_is_part_of_the_fingerprint(example_images: Path, tmp_path: Path) -> None:
    plain = extract(small(example_images, tmp_path / "plain"), progress=False)
    assert not {"upscale", "interpolation", "blur"} & set(plain.manifest["options"])  # off: not recorded
    out = tmp_path / "out"
    resampled = extract(small(example_images, out, upscale=1024, interpolation="nearest", blur=1.5), progress=False)
    assert {key: resampled.manifest["options"][key] for key in ("upscale", "interpolation", "blur")} == {
        "upscale": 1024, "interpolation": "nearest", "blur": 1.5}
    assert resampled.manifest["fingerprint"] != plain.manifest["fingerprint"]
    first, second = LandmarkSet.load(tmp_path / "plain"), LandmarkSet.load(out)
    assert [s["width"] for s in second.samples] == [s["width"] for s in first.samples]  # the source's size
    moved = np.abs(first.landmarks - second.landmarks)[..., :2].max()
    assert 0 < moved < 0.05  # the same faces, meshed from other pixels
    with pytest.raises(FacePhiError, match="upscale 1024 → off, interpolation nearest → off, blur 1.5 → off"):
        extract(small(example_images, out), progress=False)
    with pytest.raises(FacePhiError, match="blur"):
        ExtractConfig(example_images, out, blur=-1)
    with pytest.raises(FacePhiError, match="interpolation"):
        ExtractConfig(example_images, out, upscale=96, interpolation="bilinear")
    with pytest.raises(FacePhiError, match="the filter of --upscale, which is not given"):
        ExtractConfig(example_images, out, interpolation="nearest")


def test_old_manifest_without_fingerprint_counts_as_different(example_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extract(small(example_images, out), progress=False)
    manifest = read_json(out / "manifest.json")
    del manifest["fingerprint"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FacePhiError, match="no fingerprint.*--overwrite"):
        extract(small(example_images, out), progress=False)
    assert "fingerprint" in extract(small(example_images, out, overwrite=True), progress=False).manifest


def test_unfinished_job_of_other_settings_is_refused_unless_overwrite(
    example_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_process_chunk = extract_module._process_chunk
    calls: list[int] = []

    def dying_process_chunk(task):  # killed while working on the second chunk
        calls.append(task[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_process_chunk(task)

    monkeypatch.setattr(extract_module, "_process_chunk", dying_process_chunk)
    with pytest.raises(KeyboardInterrupt):
        extract(small(example_images, out, chunk_size=1), progress=False)
    monkeypatch.setattr(extract_module, "_process_chunk", real_process_chunk)
    assert (out / ".partial" / "chunk_000000.json").is_file()

    with pytest.raises(FacePhiError, match=r"unfinished extraction .*other settings \(crop_margin 0.2 → 0.5\)"):
        extract(small(example_images, out, chunk_size=1, crop_margin=0.5), progress=False)
    assert (out / ".partial" / "chunk_000000.json").is_file()  # left as it was

    result = extract(small(example_images, out, chunk_size=1, crop_margin=0.5, overwrite=True), progress=False)
    assert result.manifest["options"]["crop_margin"] == 0.5 and result.manifest["counts"]["extracted"] == 2
    assert not (out / ".partial").exists()


def test_a_folder_that_is_no_extraction_is_refused_but_an_empty_one_is_used(
    example_images: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    assert extract(small(example_images, tmp_path / "empty"), progress=False).manifest["counts"]["extracted"] == 2
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    with pytest.raises(FacePhiError, match=r"busy is not empty and holds no extraction \(notes.txt\).*--overwrite"):
        extract(small(example_images, busy), progress=False)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    extract(small(example_images, busy, overwrite=True), progress=False)
    assert (busy / "notes.txt").read_text() == "mine\n" and (busy / "manifest.json").is_file()


def test_no_face_at_all_is_an_error_after_writing_the_report(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (src / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(255, -1, -1)) * 4)
    Image.new("RGB", (200, 160), (128, 128, 128)).save(src / "c.png")
    (src / "labels.csv").write_text("file,emotion\na.jpg,happy\nb.jpg,sad\nc.png,anger\n")
    out = tmp_path / "out"
    expected = f"no face found in any of the 3 images (2 × corrupt image, 1 × no face); see {out / 'failures.csv'}"
    with pytest.raises(FacePhiError) as exc:
        extract(ExtractConfig(src, out, workers=1), progress=False)
    assert str(exc.value) == expected
    assert len(read_csv(out / "failures.csv")) == 3 and read_json(out / "manifest.json")["counts"]["extracted"] == 0
    assert not (out / ".partial").exists()
    with pytest.raises(FacePhiError) as again:  # the rerun finds the finished extraction: same error
        extract(ExtractConfig(src, out, workers=1), progress=False)
    assert str(again.value) == expected
    assert main(["extract", str(src), "--out", str(out)]) == 2
