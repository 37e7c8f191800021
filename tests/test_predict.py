"""`facephi predict`: inputs of every kind, per-input errors, checkpoint dispatch, exit status."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facephi.cli import main
from facephi.labels import CLASSES
from facephi.model.encoder import LandmarkEncoder
from facephi.model.checkpoints import checkpoint_type
from facephi.scoring.keywords import match_answer
from facephi.serve.inputs import LandmarkInput, read_inputs
from facephi.serve.predict import ENCODER, FACEPHI, Predictor
from facephi.utils.errors import FacePhiError
from train_fixtures import write_encoder

EXAMPLE_FACE = Path(__file__).resolve().parents[1] / "examples" / "images" / "happiness_1.jpg"


def raw_face(seed: int = 0) -> np.ndarray:
    """Random points shaped like raw MediaPipe output (fractions of the image)."""
    return np.random.default_rng(seed).uniform(0.2, 0.8, (478, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return write_encoder(tmp_path_factory.mktemp("encoder"))


def test_npy_inputs_and_their_errors(tmp_path):
    np.save(tmp_path / "one.npy", raw_face())
    np.save(tmp_path / "two.npy", np.stack([raw_face(1), raw_face(2)]))
    np.save(tmp_path / "shape.npy", np.zeros((468, 3), np.float32))
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    bad = raw_face()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    names = ["one", "two", "shape", "text", "nan", "broken", "absent"]
    inputs = read_inputs([tmp_path / f"{n}.npy" for n in names], image_size=(640, 480))
    assert [Path(i.source.split("[")[0]).stem for i in inputs] == ["one", "two", "two", *names[2:]]
    assert inputs[0].error is None and inputs[0].raw.shape == (478, 3) and inputs[0].size == (640.0, 480.0)
    assert inputs[1].source.endswith("two.npy[0]") and inputs[2].source.endswith("two.npy[1]")
    errors = [i.error for i in inputs[3:]]
    assert "wrong array shape [468, 3]" in errors[0]
    assert "numeric" in errors[1]
    assert "NaN" in errors[2]
    assert "unreadable .npy" in errors[3]
    assert errors[4] == "no such file or folder"


def test_degenerate_faces_are_input_errors_and_the_others_are_answered(encoder_dir, tmp_path):
    np.save(tmp_path / "good.npy", raw_face())
    np.save(tmp_path / "zero.npy", np.zeros((478, 3), np.float32))
    line = raw_face(1)
    line[:, 1] = 0.4  # every point on one horizontal line
    np.save(tmp_path / "two.npy", np.stack([line, raw_face(2)]))
    results = Predictor.from_pretrained(encoder_dir).predict(
        [tmp_path / "good.npy", tmp_path / "zero.npy", tmp_path / "two.npy"])
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[0].predicted_class in CLASSES and results[3].predicted_class in CLASSES
    assert "all landmarks are zero" in results[1].error and results[1].predicted_class is None
    assert "collapsed to a line" in results[2].error and results[2].scores is None

    from test_evaluate import write_landmark_folder

    folder = write_landmark_folder(tmp_path / "data", n=3)
    landmarks = np.load(folder / "landmarks.npy")
    landmarks[1] = 0
    np.save(folder / "landmarks.npy", landmarks)
    good, zero, other = read_inputs([folder])
    assert good.error is None and other.error is None and "all landmarks are zero" in zero.error


def test_images_non_images_and_dataset_folders(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 180, 160)).save(tmp_path / "blank.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken_dataset").mkdir()
    (tmp_path / "broken_dataset" / "samples.csv").write_text("index,path,label,split,width,height\n")
    (tmp_path / "empty").mkdir()
    inputs = read_inputs([EXAMPLE_FACE, tmp_path / "blank.png", tmp_path / "notes.txt", tmp_path / "broken_dataset",
                          tmp_path / "empty"])
    face, blank, text, folder, empty = inputs
    assert face.error is None and face.raw.shape == (478, 3) and face.size[0] > 8
    assert face.faces == 1 and face.face == 0 and len(face.box) == 4
    assert blank.error.startswith("no face found") and blank.faces == 0
    assert "not an image" in text.error
    assert "landmarks.npy: missing" in folder.error  # samples.csv: meant as a `facephi extract` folder
    assert empty.error.startswith("no image files")

    from test_evaluate import write_landmark_folder

    dataset = read_inputs([write_landmark_folder(tmp_path / "data", n=3)])
    assert [i.source.split(":")[-1] for i in dataset] == ["img_0.jpg", "img_1.jpg", "img_2.jpg"]
    assert dataset[0].label == "neutral" and dataset[2].label is None and dataset[1].size == (64.0, 48.0)


def test_encoder_checkpoint_predicts_classes(encoder_dir, tmp_path):
    assert checkpoint_type(encoder_dir) == ENCODER
    predictor = Predictor.from_pretrained(encoder_dir, batch_size=2)
    inputs = [LandmarkInput(f"face{i}", raw_face(i)) for i in range(3)] + [LandmarkInput("bad", error="boom")]
    results = predictor.predict_inputs(inputs)
    assert [r.ok for r in results] == [True, True, True, False] and results[3].error == "boom"
    for result in results[:3]:
        assert result.answer is None and set(result.scores) == set(CLASSES)
        assert sum(result.scores.values()) == pytest.approx(1, abs=1e-3)
        assert result.predicted_class == max(result.scores, key=result.scores.get)
    # the batch split does not change the result
    alone = Predictor.from_pretrained(encoder_dir, batch_size=1).predict_inputs(inputs[:3])
    assert [r.scores for r in alone] == [r.scores for r in results[:3]]


class AnsweringModel(torch.nn.Module):
    """FacePhiModel stand-in (``answer``): says "It shows anger.", "I don't know.", ... in turn and
    records what it was asked."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.asked = encoder, []

    def answer(self, points, instructions, max_new_tokens):
        self.asked.append((points.clone(), list(instructions), max_new_tokens))
        return ["It shows anger.", "I don't know.", "Surely contempt."][: len(points)]


def test_facephi_answers_are_keyword_matched(encoder_dir):
    encoder = LandmarkEncoder.from_pretrained(encoder_dir)
    model = AnsweringModel(encoder)
    predictor = Predictor(model, FACEPHI, instruction="Which emotion?", max_new_tokens=7)
    inputs = [LandmarkInput("a", raw_face(0)), LandmarkInput("b", raw_face(1), size=(64, 32)),
              LandmarkInput("c", raw_face(2))]
    anger, unknown, contempt = predictor.predict_inputs(inputs)
    # the model is asked the predictor's instruction about the encoder-normalised landmarks
    [(points, instructions, max_new_tokens)] = model.asked
    raw = np.stack([i.raw for i in inputs])
    expected_points = encoder.normalize(raw, np.array([i.size for i in inputs], np.float32))
    assert torch.equal(points, expected_points) and instructions == ["Which emotion?"] * 3 and max_new_tokens == 7
    # the class is the first one named in the answer; none when no class is named
    assert (anger.predicted_class, unknown.predicted_class, contempt.predicted_class) == ("anger", None, "contempt")
    assert unknown.ok and unknown.answer == "I don't know."
    # without class_probabilities (likelihood scoring) the probabilities are the encoder's own classifier's
    assert predictor.scores_from == "encoder" and anger.scores_from == "encoder" and anger.to_dict()["scores_from"] == "encoder"
    encoder_only = Predictor(encoder, ENCODER).predict_inputs(inputs)
    assert [r.scores for r in (anger, unknown, contempt)] == [r.scores for r in encoder_only]


def test_checkpoint_type_errors(tmp_path):
    with pytest.raises(FacePhiError, match="config.json: missing"):
        checkpoint_type(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"config_type": "something-else"}))
    with pytest.raises(FacePhiError, match="'something-else' is neither"):
        checkpoint_type(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FacePhiError, match="invalid JSON"):
        checkpoint_type(tmp_path)


def test_cli_reports_bad_inputs_and_exit_status(encoder_dir, tmp_path, capsys):
    np.save(tmp_path / "good.npy", raw_face())
    np.save(tmp_path / "bad.npy", np.zeros((3, 3), np.float32))
    code = main(["predict", "--model", str(encoder_dir), "--json", "--threads", "1", "--device", "cpu",
                 str(tmp_path / "good.npy"), str(tmp_path / "bad.npy")])
    out, err = capsys.readouterr()
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["predicted_class"] in CLASSES and rows[0]["scores_from"] == "encoder" and rows[0]["answer"] is None
    assert rows[1] == {"input": str(tmp_path / "bad.npy"), "error": rows[1]["error"]}
    assert "bad.npy: wrong array shape [3, 3]" in err and "1 of 2 inputs failed" in err

    assert main(["predict", "--model", str(encoder_dir), str(tmp_path / "bad.npy")]) == 1
    assert main(["predict", "--model", str(tmp_path), str(tmp_path / "good.npy")]) == 2
    assert "config.json: missing" in capsys.readouterr().err

    assert main(["predict", "--model", str(encoder_dir), "--device", "cpu", str(tmp_path / "good.npy")]) == 0
    text = capsys.readouterr().out
    assert text.startswith(str(tmp_path / "good.npy")) and "class:" in text and "encoder:" in text


def test_cli_with_a_facephi_checkpoint(tmp_path, capsys):
    from test_evaluate import tiny_facephi

    model = tiny_facephi(tmp_path / "facephi", save=False)
    checkpoint = tmp_path / "facephi"
    model.save_pretrained(checkpoint, save_llm=True)
    assert checkpoint_type(checkpoint) == FACEPHI
    raw = np.stack([raw_face(0), raw_face(1)])
    np.save(tmp_path / "faces.npy", raw)
    code = main(["predict", "--model", str(checkpoint), "--json", "--max-new-tokens", "3", "--device", "cpu",
                 "--precision", "float32", "--instruction", "Which emotion is this?", str(tmp_path / "faces.npy")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(rows) == 2
    # the saved-and-reloaded model answers exactly as the in-memory one (square images by default)
    points = model.encoder.normalize(raw, np.ones((2, 2), np.float32))
    answers = model.answer(points, ["Which emotion is this?"] * 2, max_new_tokens=3)
    assert [r["answer"] for r in rows] == answers
    predicted = [match_answer(answer).predicted for answer in answers]
    assert [r["predicted_class"] for r in rows] == [None if k is None else CLASSES[k] for k in predicted]
    # the scores are the model's likelihood class probabilities (FacePhiModel.class_probabilities)
    with torch.no_grad():
        probabilities = model.class_probabilities(points, ["Which emotion is this?"] * 2).numpy()
    for row, expected in zip(rows, probabilities):
        assert list(row["scores"]) == list(CLASSES) and row["scores_from"] == "likelihood"
        assert np.allclose([row["scores"][name] for name in CLASSES], expected, atol=1e-4)
    # in bfloat16 (the default where the CPU has it) the probabilities stay close
    assert main(["predict", "--model", str(checkpoint), "--json", "--max-new-tokens", "3", "--device", "cpu",
                 "--precision", "bfloat16", "--instruction", "Which emotion is this?", str(tmp_path / "faces.npy")]) == 0
    lowered = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for row, expected in zip(lowered, probabilities):
        assert np.allclose([row["scores"][name] for name in CLASSES], expected, atol=0.05)
