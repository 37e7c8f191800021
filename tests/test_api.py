"""The Python API (`from facephi import FacePhi`) and `facephi predict` on every input kind: the same
fields and the same answers both ways; folders, --all-faces, videos, faceless inputs, the default
model, the README example, threads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facephi.cli import main
from facephi.labels import CLASSES
from facephi.scoring.keywords import match_answer
from facephi.utils.errors import EMPTY_PATH

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
TOKENS = "4"  # --max-new-tokens of the tiny model in these tests


def write_video(path: Path, images: list[Image.Image], frames_each: int, rate: int) -> Path:
    """An H.264 (or MPEG-4) mp4 showing each image for ``frames_each`` frames at ``rate`` frames/s."""
    import av

    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 350, 350, "yuv420p"
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB").resize((350, 350))), format="rgb24")
            for _ in range(frames_each):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Inputs of every kind, made from the example photos."""
    from test_evaluate import write_landmark_folder

    root = tmp_path_factory.mktemp("media")
    happy, anger = (Image.open(EXAMPLES / name).convert("RGB") for name in ("happiness_1.jpg", "anger_1.jpg"))
    blank = Image.new("RGB", (350, 350), (128, 128, 128))
    shutil.copy(EXAMPLES / "happiness_1.jpg", root / "photo.jpg")
    blank.save(root / "blank.png")
    two = Image.new("RGB", (700, 350), "white")
    two.paste(happy, (0, 0))
    two.paste(anger, (350, 0))
    two.save(root / "group.jpg")
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLES / "surprise_1.jpg", folder / "b.jpg")
    shutil.copy(EXAMPLES / "fear_1.jpg", folder / "sub" / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    np.save(root / "faces.npy", np.random.default_rng(0).uniform(0.2, 0.8, (2, 478, 3)).astype(np.float32))
    write_video(root / "clip.mp4", [happy, anger, blank], frames_each=4, rate=4)  # 1 s each, 3 s
    return {"photo": root / "photo.jpg", "blank": root / "blank.png", "group": root / "group.jpg",
            "folder": folder, "npy": root / "faces.npy", "dataset": write_landmark_folder(root / "dataset", n=3),
            "clip": root / "clip.mp4"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A saved tiny random FacePhi model (answers in words, likelihood class probabilities)."""
    from test_evaluate import tiny_facephi

    return tiny_facephi(tmp_path_factory.mktemp("models") / "facephi")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    from train_fixtures import write_encoder

    return write_encoder(tmp_path_factory.mktemp("models") / "encoder")


@pytest.fixture(scope="module")
def api(tiny):
    from facephi import FacePhi

    with FacePhi.from_pretrained(tiny, device="cpu", max_new_tokens=int(TOKENS), batch_size=4) as model:
        yield model


def run_cli(capsys, *args) -> tuple[int, list[dict], str]:
    code = main(["predict", "--json", "--device", "cpu", *map(str, args)])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def check_answered(row: dict) -> None:
    assert {"input", "answer", "predicted_class", "scores", "scores_from"} <= set(row) and "error" not in row
    assert isinstance(row["answer"], str) and row["scores_from"] == "likelihood"
    found = match_answer(row["answer"]).predicted
    assert row["predicted_class"] == (None if found is None else CLASSES[found])
    assert list(row["scores"]) == list(CLASSES) and sum(row["scores"].values()) == pytest.approx(1, abs=1e-3)


def without_input(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "input"}


def test_every_input_kind_through_the_cli_and_the_api(media, tiny, api, capsys, tmp_path):
    inputs = [media["photo"], media["folder"], media["npy"], media["dataset"], media["clip"], media["group"]]
    code, rows, err = run_cli(capsys, "--model", tiny, "--max-new-tokens", TOKENS, "--batch-size", 4,
                              "--image-size", 640, 480, "--plot-dir", tmp_path / "plots", *inputs)
    assert code == 0
    [summary] = [r for r in rows if "per_second" in r]
    split = rows.index(summary)
    video = [r for r in rows[:split] if r["input"] == str(media["clip"])]
    still, group = rows[:split - len(video)], rows[split + 1:]

    # the same answers, fields and order from the API (same batches: the same inputs in one call)
    assert api.predict_many(inputs[:4], image_size=(640, 480)) == still
    result = api.predict_video(media["clip"], fps=2)
    assert result.frames == video and result.per_second == summary["per_second"]
    assert api.predict(media["group"]) == group and len(group) == 1
    assert api.predict_one(media["group"]) == group[0]

    for row in still + [r for r in video if "error" not in r] + group:
        check_answered(row)
    # an image: its face count and the face's box in pixels
    photo = still[0]
    assert photo["input"] == str(media["photo"]) and photo["faces"] == 1 and photo["face"] == 0
    x0, y0, x1, y1 = photo["box"]
    assert 0 <= x0 < x1 <= 350 and 0 <= y0 < y1 <= 350
    # a folder: its images, recursively, sorted, as found (notes.txt is no image)
    assert [r["input"] for r in still[1:3]] == [str(media["folder"] / "b.jpg"), str(media["folder"] / "sub" / "a.jpg")]
    # landmarks: one answer per face, no box; a dataset: its samples with their labels
    assert [r["input"] for r in still[3:5]] == [f"{media['npy']}[0]", f"{media['npy']}[1]"]
    assert "box" not in still[3] and "faces" not in still[3]
    assert [r["input"].split(":")[-1] for r in still[5:]] == ["img_0.jpg", "img_1.jpg", "img_2.jpg"]
    assert [r.get("label") for r in still[5:]] == ["neutral", "happiness", None]
    # the video: 2 frames per second, the faceless last second as error rows, per-second means
    assert [r["time_s"] for r in video] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [r["frame"] for r in video] == [0, 2, 4, 6, 8, 10]
    assert ["error" in r for r in video] == [False] * 4 + [True] * 2 and video[4]["faces"] == 0
    assert [s["second"] for s in summary["per_second"]] == [0, 1]
    for second in summary["per_second"]:
        frames = [r for r in video[:4] if int(r["time_s"]) == second["second"]]
        mean = {c: np.mean([r["scores"][c] for r in frames]) for c in CLASSES}
        assert second["frames"] == 2 and second["scores"] == pytest.approx(mean, abs=1e-4)
        assert second["predicted_class"] == max(mean, key=mean.get)
    assert summary["frames_sampled"] == 6 and summary["frames_answered"] == 4
    assert Path(summary["plot"]) == tmp_path / "plots" / "clip.png"
    assert Path(summary["plot"]).read_bytes().startswith(b"\x89PNG")
    assert "clip.mp4: no usable face in 2 of 6 sampled frames" in err
    png = result.plot(tmp_path / "api.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    # the text output of the same inputs
    assert main(["predict", "--model", str(tiny), "--max-new-tokens", TOKENS, "--device", "cpu",
                 str(media["photo"]), str(media["clip"])]) == 0
    text = capsys.readouterr().out
    assert text.startswith(str(media["photo"])) and "likelihood:" in text and "at 0.50 s (frame 2)" in text
    assert "4 of 6 sampled frames answered; per second:" in text


def test_in_memory_inputs_answer_as_their_files(media, api):
    photo = api.predict_one(media["photo"])
    assert api.predict(media["photo"]) == [photo]
    rgb = np.asarray(Image.open(media["photo"]).convert("RGB"))
    array, pil, data = (api.predict_one(x) for x in (rgb, Image.open(media["photo"]), media["photo"].read_bytes()))
    assert array["input"] == "<array>" and pil["input"] == str(media["photo"]) and data["input"] == "<bytes>"
    for row in (array, pil, data):
        assert without_input(row) == without_input(photo)
    [with_mesh] = api.predict_image_bytes(media["photo"].read_bytes(), return_landmarks=True)
    assert without_input({k: v for k, v in with_mesh.items() if k != "landmarks"}) == without_input(photo)
    assert len(with_mesh["landmarks"]) == 478 and all(len(p) == 2 for p in with_mesh["landmarks"])
    assert all(-0.5 < v < 1.5 for p in with_mesh["landmarks"] for v in p)
    # raw landmarks: one answer per face, the same answers as the .npy file
    faces = np.load(media["npy"])
    from_file = api.predict(media["npy"], image_size=(640, 480))
    assert isinstance(from_file, list) and len(from_file) == 2
    assert api.predict(faces[1], image_size=(640, 480)) == [api.predict_one(faces[1], image_size=(640, 480))]
    one = api.predict_one(faces[1], image_size=(640, 480))
    assert one["input"] == "<landmarks>" and without_input(one) == without_input(from_file[1])
    listed = api.predict_landmarks(faces.tolist(), image_size=(640, 480))
    assert [without_input(r) for r in listed] == [without_input(r) for r in from_file]
    assert api.predict(faces[:1], image_size=(640, 480)) == api.predict(faces[0], image_size=(640, 480))
    with pytest.raises(TypeError, match="cannot predict from a dict"):
        api.predict({"not": "an image"})


def test_predict_returns_one_type(media, api, tmp_path):
    """A list always: one image, a one-image folder, one landmark set, a faceless image; predict_one the
    largest face's dict, and a clear error when the input gives several answers."""
    one_image = tmp_path / "one"
    one_image.mkdir()
    shutil.copy(media["photo"], one_image / "photo.jpg")
    faces = np.load(media["npy"])
    for item in (media["photo"], one_image, faces[0], media["blank"], media["npy"]):
        rows = api.predict(item, image_size=(640, 480)) if item is not media["photo"] else api.predict(item)
        assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
    assert api.predict_one(one_image)["input"] == str(one_image / "photo.jpg")
    assert api.predict_one(media["blank"])["error"].startswith("no face found")
    from facephi.utils.errors import FacePhiError

    with pytest.raises(FacePhiError, match="predict_one answers one image or face, and this input gave 2"):
        api.predict_one(media["npy"])


def test_api_refuses_or_reports_bad_input_in_one_line(media, api, tmp_path):
    from facephi.utils.errors import FacePhiError

    # a 0 x 0 (or tiny) array: one error row naming the size, not MediaPipe's RuntimeError
    for shape in ((0, 0, 3), (4, 300, 3)):
        [row] = api.predict(np.zeros(shape, np.uint8))
        assert row["input"] == "<array>" and row["error"].startswith("image too small") and "\n" not in row["error"]
    # a 16-bit PIL image is answered as the same file by path
    grey = np.asarray(Image.open(media["photo"]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "deep.png")
    opened = Image.open(tmp_path / "deep.png")
    assert opened.mode.startswith("I;16")
    by_path = api.predict_one(tmp_path / "deep.png")
    assert "error" not in by_path, by_path
    assert without_input(api.predict_one(opened)) == without_input(by_path)
    # landmark image sizes outside 1 .. 100000 pixels a side, and an empty path, are refused
    face = np.load(media["npy"])[0]
    for size in ((1e300, 1e300), (1e-30, 1.0), (0, 10), (float("nan"), 5)):
        with pytest.raises(FacePhiError, match="image_size must be two sides between 1 and 100000"):
            api.predict(face, image_size=size)
    with pytest.raises(FacePhiError, match="image_size must be two numbers"):
        api.predict(face, image_size=(5,))
    assert api.predict("") == [{"input": "", "error": EMPTY_PATH}]  # an error row, never the working directory


@pytest.mark.parametrize("setting", [{"batch_size": 0}, {"batch_size": -1}, {"max_new_tokens": 0}, {"threads": 0},
                                     {"batch_size": 2.5}, {"batch_size": True}])
def test_from_pretrained_refuses_counts_below_one(encoder, setting):
    from facephi import FacePhi
    from facephi.utils.errors import FacePhiError

    name = next(iter(setting))
    with pytest.raises(FacePhiError, match=f"{name} must be a whole number >= 1"):
        FacePhi.from_pretrained(encoder, device="cpu", **setting)


def test_threads_are_set_only_while_the_model_works(encoder):
    import torch

    from facephi import FacePhi

    before = torch.get_num_threads()
    wanted = before + 1
    model = FacePhi.from_pretrained(encoder, device="cpu", threads=wanted)
    assert torch.get_num_threads() == before  # loading does not change the process's setting
    seen: list[int] = []
    stream = model.predictor.predict_stream

    def spy(*args, **kwargs):
        for prediction in stream(*args, **kwargs):
            seen.append(torch.get_num_threads())
            yield prediction

    model.predictor.predict_stream = spy
    faces = np.random.default_rng(1).uniform(0.2, 0.8, (3, 478, 3)).astype(np.float32)
    for row in model.iter_predict([faces]):
        assert torch.get_num_threads() == before  # between answers: the caller's setting
    assert seen == [wanted] * 3 and torch.get_num_threads() == before


def test_all_faces_answers_every_face_with_its_box(media, tiny, api, capsys):
    code, rows, _ = run_cli(capsys, "--model", tiny, "--max-new-tokens", TOKENS, "--all-faces", media["group"])
    assert code == 0 and len(rows) == 2 and [r["face"] for r in rows] == [0, 1]
    assert all(r["faces"] == 2 and r["input"] == str(media["group"]) for r in rows)
    centres = sorted((r["box"][0] + r["box"][2]) / 2 for r in rows)
    assert centres[0] < 350 < centres[1]  # one face in each photo
    assert api.predict(media["group"], all_faces=True) == rows
    largest = api.predict_one(media["group"])
    assert largest["faces"] == 2 and largest["box"] == rows[0]["box"]
    assert api.predict(media["photo"], all_faces=True) == api.predict(media["photo"])


def test_inputs_without_a_face_are_reported_and_the_exit_status(media, encoder, capsys, tmp_path):
    code, rows, err = run_cli(capsys, "--model", encoder, media["blank"], media["photo"])
    assert code == 0
    assert rows[0] == {"input": str(media["blank"]), "error": rows[0]["error"], "faces": 0}
    assert rows[0]["error"].startswith("no face found")
    assert rows[1]["scores_from"] == "encoder" and rows[1]["answer"] is None and rows[1]["predicted_class"] in CLASSES
    assert f"facephi predict: {media['blank']}: no face found" in err and "1 of 2 inputs failed" in err
    # nothing answered: exit status 1 (a folder of faceless images, a video without a face, an empty folder)
    (tmp_path / "faceless" / "deeper").mkdir(parents=True)
    shutil.copy(media["blank"], tmp_path / "faceless" / "deeper" / "blank.png")
    (tmp_path / "empty").mkdir()
    write_video(tmp_path / "grey.mp4", [Image.open(media["blank"])], frames_each=2, rate=4)
    code, rows, err = run_cli(capsys, "--model", encoder, tmp_path / "faceless", tmp_path / "grey.mp4",
                              tmp_path / "empty", tmp_path / "broken.mkv")
    assert code == 1
    assert rows[0]["input"] == str(tmp_path / "faceless" / "deeper" / "blank.png")
    assert rows[-1] == {"input": str(tmp_path / "broken.mkv"), "error": "no such file or folder"}
    assert "no usable face in 1 of 1 sampled frames" in err and "no image files" in err
    assert "4 of 4 inputs failed" in err
    (tmp_path / "not-a-video.mp4").write_text("hello")
    code, rows, err = run_cli(capsys, "--model", encoder, tmp_path / "not-a-video.mp4")
    assert code == 1 and rows[0]["error"].startswith("unreadable video") and "not-a-video.mp4: unreadable" in err


def test_cli_refuses_a_decompression_bomb_by_its_header(encoder, media, capsys, tmp_path):
    from test_images import write_png

    bomb = write_png(tmp_path / "bomb.png", 13000, 13000)  # 164 KB of zeros, 169 Mpx
    code, rows, err = run_cli(capsys, "--model", encoder, bomb, media["photo"])
    assert code == 0 and rows[0]["input"] == str(bomb) and rows[0]["error"].startswith("image too large")
    assert "13000x13000" in rows[0]["error"] and "error" not in rows[1]


def test_default_model(monkeypatch, tmp_path, encoder, media, capsys):
    import facephi.model.defaults as defaults
    import facephi.serve.api as api_module

    absent = tmp_path / "models" / "facephi-smollm2-ferplus"
    monkeypatch.setattr(defaults, "SHIPPED_MODEL", absent)
    monkeypatch.setattr(api_module, "SHIPPED_MODEL", absent)
    monkeypatch.delenv("FACEPHI_MODEL", raising=False)
    assert main(["predict", str(media["npy"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the shipped model {absent} is missing from this installation" in err
    monkeypatch.setenv("FACEPHI_MODEL", str(encoder))
    code, rows, _ = run_cli(capsys, media["npy"])
    assert code == 0 and len(rows) == 2 and rows[0]["scores_from"] == "encoder"
    assert defaults.SHIPPED_MODEL.name == "facephi-smollm2-ferplus"


def test_readme_example(media, tiny, monkeypatch, tmp_path, capsys):
    """The README's snippet, verbatim, with the tiny model as the default model."""
    for name in ("photo", "group", "clip"):
        shutil.copy(media[name], tmp_path / media[name].name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACEPHI_MODEL", str(tiny))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("\n", 1)[1] for block in readme.split("```python")[1:]]
    snippet = next(block.split("```", 1)[0] for block in blocks if "from facephi import FacePhi" in block)
    exec(compile(snippet, "README.md", "exec"), {})  # the README's own example, as written there
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 + 2 and (tmp_path / "clip.png").read_bytes().startswith(b"\x89PNG")


def test_threads_share_one_model(encoder):
    from facephi import FacePhi

    model = FacePhi.from_pretrained(encoder, device="cpu", batch_size=3)
    faces = np.random.default_rng(1).uniform(0.2, 0.8, (8, 478, 3)).astype(np.float32)
    expected = [model.predict_landmarks(face, (64, 48)) for face in faces]
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = [model.predict_landmarks(face, (64, 48)) for face in faces]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[k] == expected for k in range(4))


def test_import_facephi_stays_light():
    code = ("import sys, facephi; assert 'torch' not in sys.modules and 'numpy' not in sys.modules; "
            "assert 'FacePhi' in dir(facephi); from facephi import FacePhi; assert FacePhi.__name__ == 'FacePhi'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
