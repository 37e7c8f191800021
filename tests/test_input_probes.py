"""Bad inputs of `facephi predict`, `demo`, `extract` and the shared input readers (issue 19, "Bad input"
and "Silent fallbacks"): each gets one clear line or an ``error`` row, never stops the good inputs
beside it, and is refused before any work where it can be.

Tests run as root, for whom ``chmod 000`` changes nothing: unreadable files and folders are
simulated by making the reader raise the ``PermissionError`` the system would.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facephi.cli import main
from facephi.labels import CLASSES
from facephi.landmarks import images as images_module
from facephi.landmarks.mesh import FaceMesher, MeshError
from facephi.serve import inputs as inputs_module
from facephi.serve.inputs import check_image_size, check_instruction, read_inputs, read_rgb, read_video
from facephi.utils.errors import EMPTY_PATH, FacePhiError
from test_cli_probes import cli, one_error
from train_fixtures import write_encoder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
SRC = Path(__file__).resolve().parents[1] / "src"
PHOTOS = ("happiness_1.jpg", "sadness_1.jpg")


def raw_face(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, (478, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return write_encoder(tmp_path_factory.mktemp("encoder") / "encoder")


@pytest.fixture(scope="module")
def mesher():
    with FaceMesher() as m:
        yield m


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test when a model starts loading (the refusal must come first)."""
    from facephi.serve.api import FacePhi

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(FacePhi, "from_pretrained", classmethod(refuse))


def predict_rows(out: str) -> dict[str, dict]:
    return {row["input"]: row for row in map(json.loads, out.splitlines())}


# ----------------------------------------------------------------------------- 1. folders, empty paths

def test_unreadable_photo_and_subfolder_do_not_stop_a_folder(encoder, tmp_path, monkeypatch, capsys, caplog):
    folder = tmp_path / "photos"
    (folder / "locked").mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy(EXAMPLES / name, folder / name)
    shutil.copy(EXAMPLES / "anger_1.jpg", folder / "private.jpg")
    shutil.copy(EXAMPLES / "fear_1.jpg", folder / "locked" / "hidden.jpg")
    locked_photo, locked_folder = folder / "private.jpg", folder / "locked"

    load_image, scandir = images_module.load_image, os.scandir

    def load_as_user(source, *args, **kwargs):  # what chmod 000 does to a non-root reader
        if Path(str(source)) == locked_photo:
            raise PermissionError(errno.EACCES, "Permission denied", str(source))
        return load_image(source, *args, **kwargs)

    def scandir_as_user(path="."):
        if Path(path) == locked_folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(images_module, "load_image", load_as_user)
    monkeypatch.setattr(os, "scandir", scandir_as_user)
    code, out, lines = cli(capsys, caplog, "predict", "--model", encoder, "--json", "--threads", "1",
                           "--device", "cpu", folder)
    assert code == 0, lines
    rows = predict_rows(out)
    for name in PHOTOS:  # every good photo answered
        assert rows[str(folder / name)]["predicted_class"] in CLASSES, rows
    assert "Permission denied" in rows[str(locked_photo)]["error"]
    assert "cannot read the folder" in rows[str(locked_folder)]["error"]  # reported, not skipped silently
    assert any(str(locked_folder) in line and "Permission denied" in line for line in lines), lines
    assert any("2 of 4 inputs failed" in line for line in lines), lines


def test_an_unreadable_top_folder_is_named(tmp_path, monkeypatch):
    scandir = os.scandir

    def scandir_as_user(path="."):
        if Path(path) == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_as_user)
    (row,) = read_inputs([tmp_path], mesher=object())
    assert row.source == str(tmp_path) and row.error == "cannot read the folder (Permission denied)"


def test_an_empty_path_is_refused_not_read_as_the_working_directory(tmp_path, monkeypatch, no_model,
                                                                     capsys, caplog):
    shutil.copy(EXAMPLES / PHOTOS[0], tmp_path / PHOTOS[0])
    monkeypatch.chdir(tmp_path)

    class NoMesh:
        def find_faces(self, *args):
            raise AssertionError("an image under the working directory was read")

    rows = read_inputs(["", str(tmp_path / "absent.jpg")], mesher=NoMesh())
    assert [(r.source, r.error) for r in rows] == [("", EMPTY_PATH), (str(tmp_path / "absent.jpg"),
                                                                      "no such file or folder")]
    line = one_error(capsys, caplog, "predict", "")
    assert "empty path" in line and "INPUT" in line, line
    line = one_error(capsys, caplog, "extract", "", "--out", tmp_path / "out")
    assert "empty path" in line, line


def test_the_api_refuses_an_empty_path(encoder, tmp_path, monkeypatch):
    from facephi.serve.api import FacePhi

    shutil.copy(EXAMPLES / PHOTOS[0], tmp_path / PHOTOS[0])
    monkeypatch.chdir(tmp_path)
    with FacePhi.from_pretrained(encoder, device="cpu") as model:
        rows = model.predict_many([""])
    assert rows == [{"input": "", "error": EMPTY_PATH}]


# ----------------------------------------------------------------------------- 2. .npy files and arrays

def write_npy_header(path: Path, shape: tuple[int, ...], data: bytes = b"", descr: str = "<f4") -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(data)
    return path


def test_npy_headers_are_checked_before_loading(tmp_path, monkeypatch):
    huge = write_npy_header(tmp_path / "huge.npy", (10_000_000, 478, 3), b"\0" * 64)  # declares 57 GB
    short = write_npy_header(tmp_path / "short.npy", (2, 478, 3), b"\0" * 100)
    text = write_npy_header(tmp_path / "text.npy", (478, 3), descr="<U4")
    np.save(tmp_path / "empty.npy", np.zeros((0, 0), np.float32))
    np.save(tmp_path / "none.npy", np.zeros((0, 478, 3), np.float32))
    np.save(tmp_path / "good.npy", np.stack([raw_face(1), raw_face(2)]))
    load = np.load

    def guarded_load(path, *args, **kwargs):
        assert Path(path).name in ("none.npy", "good.npy"), f"{path} was loaded although its header is refused"
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", guarded_load)
    names = ["huge", "short", "text", "empty", "none", "good"]
    rows = {Path(r.source.split("[")[0]).stem: r for r in read_inputs([tmp_path / f"{n}.npy" for n in names])}
    assert "too large" in rows["huge"].error and "53.4 GiB" in rows["huge"].error
    assert "truncated .npy" in rows["short"].error
    assert "numeric" in rows["text"].error
    assert "wrong array shape [0, 0]" in rows["empty"].error
    assert "no face" in rows["none"].error
    assert rows["good"].error is None


def test_a_57_gb_npy_header_is_one_line_and_the_good_file_is_answered(encoder, tmp_path, capsys, caplog):
    huge = write_npy_header(tmp_path / "huge.npy", (10_000_000, 478, 3), b"\0" * 64)
    np.save(tmp_path / "good.npy", raw_face())
    code, out, lines = cli(capsys, caplog, "predict", "--model", encoder, "--json", "--threads", "1",
                           "--device", "cpu", huge, tmp_path / "good.npy")
    assert code == 0, lines
    assert predict_rows(out)[str(tmp_path / "good.npy")]["predicted_class"] in CLASSES
    assert lines[0].startswith(f"facephi predict: {huge}: the array is too large"), lines


@pytest.mark.parametrize("array", [np.zeros((0, 0, 3), np.uint8), np.zeros((4, 0, 3), np.uint8),
                                   np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32)])
def test_images_the_mesh_cannot_take_are_input_errors(array, mesher):
    (row,) = read_rgb(array, (8.0, 8.0), "<array>", mesher)
    assert row.raw is None and "\n" not in row.error and ("empty image" in row.error or "uint8" in row.error)


def test_a_mediapipe_failure_is_one_line_and_the_mesh_is_rebuilt(mesher, monkeypatch):
    from facephi.landmarks.images import load_image

    photo = load_image(EXAMPLES / PHOTOS[0]).rgb
    broken = mesher._mesh

    class Failing:
        def process(self, rgb):
            raise RuntimeError("CalculatorGraph::Run() failed: \nCalculator::Process() for node ... failed")

        def close(self):
            broken.close()

    mesher._mesh = Failing()
    with pytest.raises(MeshError, match=r"^the face mesh failed on the image \(CalculatorGraph::Run\(\) failed:\)$"):
        mesher.process(photo)
    assert len(mesher.process(photo)) == 1  # a fresh graph, not MediaPipe's broken one


# ----------------------------------------------------------------------------- 3. demo, videos

def test_demo_with_only_corrupt_photos_exits_non_zero(encoder, tmp_path, capsys, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.png"):
        (photos / name).write_bytes(b"\xff\xd8\xff\xe0 not really an image")
    code, out, lines = cli(capsys, caplog, "demo", "--images", photos, "--model", encoder, "--threads", "1")
    assert code == 1, (out, lines)
    assert out.count("ERROR:") == 2 and "facephi serve" not in out
    assert lines == ["facephi demo: none of the 2 photos could be answered (see the table)"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, Path]:
    from PIL import Image

    from test_api import write_video  # 4 s at 10 frames/s

    folder = tmp_path_factory.mktemp("videos")
    full = write_video(folder / "clip.mkv", [Image.open(EXAMPLES / PHOTOS[0])], frames_each=40, rate=10)
    import av

    with av.open(str(full)) as container:  # cut the file where the packet of second 2 starts
        cut = next(packet.pos for packet in container.demux(container.streams.video[0])
                   if packet.pts is not None and packet.pts * packet.time_base >= 2 and packet.pos)
    truncated = folder / "cut.mkv"
    truncated.write_bytes(full.read_bytes()[:cut])
    return full, truncated


class NoFace:
    def find_faces(self, rgb, size=None):
        return []


def test_a_truncated_video_says_so_with_the_last_good_time(videos):
    full, truncated = videos
    rows = list(read_video(full, 2.0, NoFace()))
    assert len(rows) == 8 and all(r.frame is not None for r in rows)  # complete: no warning
    rows = list(read_video(truncated, 2.0, NoFace()))
    *frames, last = rows
    assert frames and all(r.frame is not None for r in frames)
    assert last.frame is None and last.error.startswith("the video stops early (truncated?): decoded up to ")
    decoded_up_to = float(last.error.split("decoded up to ")[1].split(" s")[0])
    assert frames[-1].time_s <= decoded_up_to < 3.0 and "of the 4.00 s it declares" in last.error


def test_an_error_of_the_mesh_is_not_a_video_decoding_error(videos):
    class Buggy:
        def find_faces(self, rgb, size=None):
            raise ValueError("a bug in the mesh code")

    with pytest.raises(ValueError, match="a bug in the mesh code"):
        list(read_video(videos[0], 2.0, Buggy()))


def test_cli_warns_about_a_truncated_video_and_answers_its_frames(encoder, videos, capsys, caplog):
    truncated = videos[1]
    code, out, lines = cli(capsys, caplog, "predict", "--model", encoder, "--json", "--threads", "1",
                           "--device", "cpu", truncated)
    assert code == 0, lines
    frames = [row for row in map(json.loads, out.splitlines()) if "frame" in row and "error" not in row]
    assert frames and all(row["predicted_class"] in CLASSES for row in frames)
    warnings = [line for line in lines if "stops early" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"facephi predict: {truncated}: "), lines


# ----------------------------------------------------------------------------- 4. flags and request values

@pytest.mark.parametrize("size", [("1e300", "1e300"), ("1e-30", "1e-30"), ("640", "1e-30"), ("0", "480"),
                                  ("-640", "480"), ("nan", "480"), ("inf", "480")])
def test_image_size_outside_a_sane_range_is_refused_before_work(size, tmp_path, no_model, capsys, caplog):
    np.save(tmp_path / "face.npy", raw_face())
    line = one_error(capsys, caplog, "predict", "--image-size", *size, tmp_path / "face.npy")
    assert "--image-size" in line, line


def test_check_image_size_is_the_one_range_check():
    assert check_image_size(None) == (1.0, 1.0)
    assert check_image_size([640, 480]) == (640.0, 480.0)
    for bad in ((1e300, 1e300), (1e-30, 1.0), (0, 1), (float("nan"), 1), (1, 2, 3), "ab", (1, None)):
        with pytest.raises(FacePhiError, match=r"^image_size: "):
            check_image_size(bad)
    with pytest.raises(FacePhiError, match="image_size"):
        read_inputs([Path("face.npy")], image_size=(1e300, 1e300))


@pytest.mark.parametrize("instruction", ["", "   "])
def test_an_empty_instruction_is_refused_not_replaced_by_the_default(instruction, tmp_path, no_model,
                                                                   capsys, caplog):
    np.save(tmp_path / "face.npy", raw_face())
    line = one_error(capsys, caplog, "predict", "--instruction", instruction, tmp_path / "face.npy")
    assert "--instruction" in line and "empty" in line, line
    assert check_instruction(None) is None and check_instruction("Which emotion?") == "Which emotion?"


# ----------------------------------------------------------------------------- 5. meshing errors in extraction

def test_extraction_catches_bad_images_but_not_bugs(tmp_path, monkeypatch):
    from facephi.landmarks import extract as extract_module
    from facephi.landmarks.extract import _MeshSettings, extract_one

    settings = _MeshSettings(padding=0.25, max_side=1280, max_faces=4, crop_margin=0.2)
    photo = EXAMPLES / PHOTOS[0]

    class Mesh:
        def __init__(self, error):
            self.error = error

        def __call__(self, rgb):
            raise self.error

    points, info = extract_one(Mesh(MeshError("the face mesh failed on the image (x)")), photo, None, settings)
    assert points is None and info["reason"] == "mesh error" and "failed on the image" in info["detail"]
    for bug in (TypeError("unexpected keyword"), AttributeError("no attribute"), KeyError("x"), ValueError("bad")):
        with pytest.raises(type(bug)):
            extract_one(Mesh(bug), photo, None, settings)

    def unreadable(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(extract_module, "load_image", unreadable)
    points, info = extract_one(Mesh(AssertionError("not reached")), photo, None, settings)
    assert points is None and info["reason"] == "unreadable file" and "Permission denied" in info["detail"]


def test_extract_names_an_unreadable_folder_before_any_work(tmp_path, monkeypatch, capsys, caplog):
    from facephi.landmarks import extract as extract_module

    source = tmp_path / "photos"
    for name, photo in (("happiness", PHOTOS[0]), ("sadness", PHOTOS[1])):
        (source / name / "2024").mkdir(parents=True)
        shutil.copy(EXAMPLES / photo, source / name / "2024" / photo)
    locked, scandir = source / "sadness" / "2024", os.scandir

    def scandir_as_user(path="."):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    def no_work(*args, **kwargs):
        raise AssertionError("images were meshed before the refusal")

    monkeypatch.setattr(os, "scandir", scandir_as_user)
    monkeypatch.setattr(extract_module, "_run_tasks", no_work)
    line = one_error(capsys, caplog, "extract", source, "--out", tmp_path / "out", "--workers", "1", "--no-progress")
    assert line == f"facephi extract: error: {locked}: cannot read the dataset (Permission denied)"
    assert not (tmp_path / "out").exists()


def test_mediapipe_norm_rect_warning_is_not_printed(tmp_path):
    script = ("import sys\nfrom facephi.landmarks.images import load_image\n"
              "from facephi.landmarks.mesh import FaceMesher\n"
              "for path in sys.argv[1:]:\n"
              "    with FaceMesher() as mesher:\n"
              "        assert len(mesher.find_faces(load_image(path).rgb)) == 1\n")
    photos = [str(EXAMPLES / name) for name in PHOTOS]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, *photos], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "NORM_RECT" not in done.stderr and "W0000" not in done.stderr, done.stderr


# ----------------------------------------------------------------------------- 6. utils/io leaves the umask alone

def test_importing_utils_io_does_not_touch_the_umask():
    script = ("import os\n"
              "def refuse(*args):\n    raise AssertionError('os.umask called at import')\n"
              "os.umask = refuse\nimport facephi.utils.io\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


def test_written_files_and_folders_follow_the_umask(tmp_path):
    from facephi.utils.io import atomic_dir, write_text

    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "model") as staging:
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "model"]  # no staging left behind


def test_a_video_in_a_folder_that_cannot_be_searched_is_an_error_row(encoder, tmp_path, monkeypatch, capsys, caplog):
    import pathlib

    locked = tmp_path / "private" / "clip.mp4"
    np.save(tmp_path / "good.npy", raw_face())
    stat = pathlib.Path.stat

    def stat_as_user(self, *args, **kwargs):  # what a folder without search permission does to a non-root user
        if self == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat_as_user)
    code, out, lines = cli(capsys, caplog, "predict", "--model", encoder, "--json", "--threads", "1",
                           "--device", "cpu", locked, tmp_path / "good.npy")
    assert code == 0, lines
    rows = predict_rows(out)
    assert rows[str(locked)]["error"] == "cannot read it (Permission denied)"
    assert rows[str(tmp_path / "good.npy")]["predicted_class"] in CLASSES
