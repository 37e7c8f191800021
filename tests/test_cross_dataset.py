"""Cross-dataset evaluation: a folder dataset evaluated whole, photos without a face counted as wrong
answers, resuming decided by the content of model and data, and the explicit class prior."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval_fixtures import FirstCoordinateModel, write_photo_folder
from facephi.eval.evaluate import evaluate_model
from facephi.eval.results import EvalResult, resolve_prior
from facephi.labels import CLASSES
from facephi.landmarks.store import LandmarkSet
from facephi.scoring.metrics import MISS, compute_metrics
from facephi.utils.errors import FacePhiError

K = len(CLASSES)


def test_a_set_without_splits_is_evaluated_whole_by_default(tmp_path):
    data = LandmarkSet.load(write_photo_folder(tmp_path))
    assert data.default_eval_split() == "all"
    assert data.select("all").tolist() == list(range(16))
    split = LandmarkSet.load(write_photo_folder(tmp_path / "x"))
    split.splits[:4] = "test"
    assert split.default_eval_split() == "test"


@pytest.mark.parametrize("label_column", [False, True])
def test_photos_without_a_face_count_as_wrong_answers(tmp_path, label_column):
    data = LandmarkSet.load(write_photo_folder(tmp_path, label_column=label_column))
    result = evaluate_model(FirstCoordinateModel(), data, "all", batch_size=5, progress=False, mode="both",
                            out_dir=tmp_path / "eval")
    assert result.metrics.n == 16  # the faces' own figures stay those of the faces
    no_face = result.extra["no_face"]
    assert no_face["n"] == 3 and no_face["counted"] and no_face["reasons"] == {"no face": 3}
    assert no_face["by_class"]["anger"] == 2 and no_face["by_class"]["happiness"] == 1
    truth = [r["true_index"] for r in result.records] + [CLASSES.index("anger")] * 2 + [CLASSES.index("happiness")]
    answered = [r["predicted_index"] for r in result.records] + [MISS] * 3
    whole = result.whole_set()
    expected = compute_metrics(truth, answered)
    assert whole.n == 19 and whole.accuracy == pytest.approx(expected.accuracy)
    assert whole.balanced_accuracy == pytest.approx(expected.balanced_accuracy)
    assert whole.confusion == expected.confusion and whole.confusion[CLASSES.index("anger")][K] >= 2
    assert whole.accuracy < result.metrics.accuracy or result.metrics.accuracy == 0
    scored = [CLASSES.index(r["scored_class"]) for r in result.records] + [MISS] * 3
    assert result.whole_set("score").accuracy == pytest.approx(compute_metrics(truth, scored).accuracy)
    loaded = EvalResult.load(tmp_path / "eval")  # read back the same
    assert loaded.whole_set().to_dict() == whole.to_dict() and loaded.extra["no_face"] == no_face
    assert "## Photos without a face" in (tmp_path / "eval" / "report.md").read_text()
    # a subset of the faces cannot count them: said so, not counted
    limited = evaluate_model(FirstCoordinateModel(), data, "all", limit=5, progress=False)
    assert not limited.extra["no_face"]["counted"] and "--limit" in limited.extra["no_face"]["note"]
    assert "all_photos" not in limited.extra and limited.whole_set() == limited.metrics


def test_photos_without_a_face_whose_labels_cannot_be_found_are_reported_not_counted(tmp_path):
    root = write_photo_folder(tmp_path)
    (root / "manifest.json").write_text(json.dumps({"source": str(tmp_path / "moved"), "reader": "folder"}))
    result = evaluate_model(FirstCoordinateModel(), LandmarkSet.load(root), "all", progress=False)
    assert result.extra["no_face"]["n"] == 3 and not result.extra["no_face"]["counted"]
    assert "moved" in result.extra["no_face"]["note"] and "all_photos" not in result.extra


def test_resume_is_decided_by_content_not_paths(tmp_path):
    """Retraining into the same folder or re-extracting the data must never continue a partial run."""
    root = write_photo_folder(tmp_path)

    def interrupted(out):
        with pytest.raises(KeyboardInterrupt):
            evaluate_model(FirstCoordinateModel(fail_after=2), LandmarkSet.load(root), "all", batch_size=4,
                           out_dir=out, progress=False)

    interrupted(tmp_path / "a")
    retrained = FirstCoordinateModel()
    with torch.no_grad():
        retrained.weight += 3  # other weights, same everything else
    result = evaluate_model(retrained, LandmarkSet.load(root), "all", batch_size=4, out_dir=tmp_path / "a",
                            progress=False)
    assert sum(retrained.calls) == 16  # started over: no answer of the old model kept
    assert result.records == evaluate_model(retrained, LandmarkSet.load(root), "all", batch_size=4,
                                            progress=False).records
    interrupted(tmp_path / "b")  # the same model and data resume
    same = FirstCoordinateModel()
    evaluate_model(same, LandmarkSet.load(root), "all", batch_size=4, out_dir=tmp_path / "b", progress=False)
    assert sum(same.calls) == 8
    interrupted(tmp_path / "c")
    np.save(root / "landmarks.npy", np.load(root / "landmarks.npy")[::-1].copy())  # extracted again, other faces
    model = FirstCoordinateModel()
    result = evaluate_model(model, LandmarkSet.load(root), "all", batch_size=4, out_dir=tmp_path / "c", progress=False)
    assert sum(model.calls) == 16
    fresh = evaluate_model(FirstCoordinateModel(), LandmarkSet.load(root), "all", batch_size=4, progress=False)
    assert result.records == fresh.records


def test_a_finished_evaluation_is_reused_only_with_the_same_content(tmp_path):
    root = write_photo_folder(tmp_path)
    out = tmp_path / "eval"
    first = evaluate_model(FirstCoordinateModel(), LandmarkSet.load(root), "all", out_dir=out, progress=False)
    again = FirstCoordinateModel()
    reused = evaluate_model(again, LandmarkSet.load(root), "all", out_dir=out, progress=False)
    assert again.calls == [] and reused.records == first.records  # same model, data and settings
    retrained = FirstCoordinateModel()
    with torch.no_grad():
        retrained.weight += 1
    with pytest.raises(FacePhiError, match="other settings.*model_fingerprint.*--overwrite"):
        evaluate_model(retrained, LandmarkSet.load(root), "all", out_dir=out, progress=False)
    assert EvalResult.load(out).records == first.records  # untouched
    replaced = evaluate_model(retrained, LandmarkSet.load(root), "all", out_dir=out, progress=False, overwrite=True)
    assert sum(retrained.calls) == 16 and EvalResult.load(out).records == replaced.records != first.records


def test_class_prior_is_explicit_and_recorded(tmp_path):
    root = write_photo_folder(tmp_path)
    data = LandmarkSet.load(root)
    assert resolve_prior("uniform") == (None, {"name": "uniform"})
    with pytest.raises(FacePhiError, match="--prior-data"):
        resolve_prior("train")
    prior, source = resolve_prior("train", train_data=data)
    counts = np.bincount(data.labels[data.select("train")], minlength=K)  # the standard train split
    np.testing.assert_allclose(prior, (counts + 1) / (counts.sum() + K))
    assert source["name"] == "train" and source["n_samples"] == counts.sum() and prior[2] > prior[0]
    (tmp_path / "prior.json").write_text(json.dumps({c: (4.0 if c == "neutral" else 1.0) for c in CLASSES}))
    prior, source = resolve_prior(tmp_path / "prior.json")
    assert prior[0] == pytest.approx(4 / 11) and source == {"name": "file", "from": str(tmp_path / "prior.json")}
    (tmp_path / "bad.json").write_text(json.dumps({"neutral": 1}))
    with pytest.raises(FacePhiError, match="missing happiness"):
        resolve_prior(tmp_path / "bad.json")
    with pytest.raises(FacePhiError, match="not uniform, train"):
        resolve_prior(tmp_path / "nowhere.json")
    plain = evaluate_model(FirstCoordinateModel(), data, "all", progress=False, mode="score")
    assert plain.extra["prior"] == {"name": "uniform"} and "score_prior_corrected" not in plain.extra
    tilted = evaluate_model(FirstCoordinateModel(), data, "all", progress=False, mode="score",
                            prior=tmp_path / "prior.json", prior_tau=0.5)
    recorded = tilted.extra["prior"]
    assert recorded["name"] == "file" and recorded["tau"] == 0.5
    assert recorded["values"]["neutral"] == pytest.approx(4 / 11)
    probs = np.array([[r["scores"][c] for c in CLASSES] for r in tilted.records])
    adjusted = probs / np.sqrt(np.array([recorded["values"][c] for c in CLASSES]))
    assert [r["scored_class_prior_corrected"] for r in tilted.records] == [CLASSES[k] for k in adjusted.argmax(1)]
    assert "score_prior_corrected" in tilted.extra["all_photos"]


def test_eval_cli_on_a_folder_dataset(tmp_path, capsys):
    from facephi.cli import main
    from train_fixtures import write_encoder

    data = write_photo_folder(tmp_path)
    encoder = write_encoder(tmp_path / "encoder")
    common = ["--model", str(encoder), "--data", str(data), "--threads", "1", "--device", "cpu", "--no-progress"]
    assert main(["eval", *common, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "[all]" in out and "Photos without a face: 3" in out and "All 19 photos, classifier: accuracy" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["n"] == 16 and saved["all_photos"]["n"] == 19 and saved["settings"]["split"] == "all"
    assert len(saved["settings"]["model_fingerprint"]) == 64 and len(saved["settings"]["data_fingerprint"]) == 64
    assert main(["eval", *common, "--out", str(tmp_path / "p"), "--mode", "score", "--prior", "x.json"]) == 2
    assert "is a landmark encoder" in capsys.readouterr().err  # an encoder has no class scoring to adjust
    assert main(["eval", *common, "--out", str(tmp_path / "p"), "--prior", "train"]) == 2  # generate: no prior
    assert "--mode score or both" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("flag", ["--encoder-weight", "--answer-prior-tau"])
def test_answer_flags_with_an_encoder_model_name_the_flag(tmp_path, capsys, monkeypatch, command, flag):
    from facephi.cli import main
    from facephi.serve import api
    from train_fixtures import write_encoder

    encoder = write_encoder(tmp_path / "encoder")
    monkeypatch.setattr(api.Predictor, "from_pretrained", None)  # refused before any model loads
    target = ["--data", str(write_photo_folder(tmp_path)), "--out", str(tmp_path / "out")] if command == "eval" else \
        [str(tmp_path)]
    assert main([command, "--model", str(encoder), *target, flag, "1"]) == 2
    err = capsys.readouterr().err
    assert f"{flag}: applies to a FacePhi model's answers" in err and str(encoder) in err and "\n" not in err.strip()


def test_eval_cli_checks_the_prior_before_loading_the_model(tmp_path, capsys):
    from facephi.cli import main
    from test_evaluate import tiny_facephi

    data = write_photo_folder(tmp_path)
    common = ["--model", str(tiny_facephi(tmp_path / "m")), "--data", str(data), "--threads", "1", "--device", "cpu",
              "--no-progress", "--mode", "score", "--out", str(tmp_path / "p")]
    # --prior train on a set that is all evaluated: one line, before anything is loaded
    assert main(["eval", *common, "--prior", "train"]) == 2
    assert "--prior-data" in capsys.readouterr().err
    assert main(["eval", *common, "--prior", str(tmp_path / "x.json")]) == 2
    assert "not uniform, train, a file or a folder" in capsys.readouterr().err
    assert not (tmp_path / "p" / "metrics.json").exists()
    other = write_photo_folder(tmp_path / "other")  # the model's training data named
    assert main(["eval", *common, "--prior", "train", "--prior-data", str(other), "--limit", "4"]) == 0
    saved = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert saved["prior"]["name"] == "train" and saved["prior"]["from"] == str(other)
    assert "score_prior_corrected" in saved and "train prior divided out (tau 1.0)" in capsys.readouterr().out
