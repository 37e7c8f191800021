"""Cross-dataset evaluation: a folder dataset evaluated whole, photos without a face counted as wrong
answers, resuming decided by the content of model and data, and the explicit class prior."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from facephi.eval.evaluate import evaluate_model
from facephi.eval.results import EvalResult, resolve_prior
from facephi.labels import CLASSES
from facephi.landmarks.normalize import Normalizer
from facephi.landmarks.store import LandmarkSet
from facephi.scoring.metrics import MISS, compute_metrics
from facephi.utils.errors import FacePhiError

K = len(CLASSES)


def write_photo_folder(tmp_path, n=16, failed=(("anger", 2), ("happiness", 1)), label_column=False):
    """A folder of class folders (the source, empty files: readers open no image) and its extraction:
    ``n`` faces, all in split ``train``, and ``failed`` photos without a face per class."""
    source, out = tmp_path / "photos", tmp_path / "data"
    rng = np.random.default_rng(0)
    rows, failures = [], []
    for i in range(n):
        label = CLASSES[i % K]
        (source / label).mkdir(parents=True, exist_ok=True)
        (source / label / f"face{i:02d}.jpg").write_bytes(b"")
        rows.append([i, f"{label}/face{i:02d}.jpg", label, "train", 64, 48])
    for label, count in failed:
        for j in range(count):
            (source / label).mkdir(parents=True, exist_ok=True)
            (source / label / f"noface{j}.jpg").write_bytes(b"")
            failures.append([f"{label}/noface{j}.jpg", "train", "no face", "", *([label] if label_column else [])])
    out.mkdir()
    np.save(out / "landmarks.npy", rng.uniform(0.2, 0.8, (n, 478, 3)).astype(np.float32))
    with open(out / "samples.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["index", "path", "label", "split", "width", "height"], *rows])
    with open(out / "failures.csv", "w", newline="") as fh:
        header = ["path", "split", "reason", "detail", *(["label"] if label_column else [])]
        csv.writer(fh).writerows([header, *failures])
    (out / "manifest.json").write_text(json.dumps({"source": str(source), "reader": "folder", "options": {}}))
    return out


class Encoder(torch.nn.Module):
    normalizer = Normalizer(align=False)


class FirstCoordinateModel(torch.nn.Module):
    """Answers and scores from the first landmark's x (so the answers depend on the data's content);
    ``fail_after`` batches, then an interruption."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.encoder = Encoder()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fail_after, self.calls = fail_after, []

    def _classes(self, points):
        return [(int(abs(float(p[0, 0])) * 1000) + int(self.weight.item())) % K for p in points]

    def answer(self, points, instructions, max_new_tokens):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(len(points))
        return [f"It shows {CLASSES[k]}." for k in self._classes(points)]

    def class_log_likelihoods(self, points, instructions, templates="first"):
        scores = torch.full((len(points), K), -5.0)
        for row, k in enumerate(self._classes(points)):
            scores[row, k] = -1.0
        return scores


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
    out = tmp_path / "eval"
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(FirstCoordinateModel(fail_after=2), LandmarkSet.load(root), "all", batch_size=4,
                       out_dir=out, progress=False)
    retrained = FirstCoordinateModel()
    with torch.no_grad():
        retrained.weight += 3  # other weights, same everything else
    result = evaluate_model(retrained, LandmarkSet.load(root), "all", batch_size=4, out_dir=out, progress=False)
    assert sum(retrained.calls) == 16  # started over: no answer of the old model kept
    assert result.records == evaluate_model(retrained, LandmarkSet.load(root), "all", batch_size=4,
                                            progress=False).records
    # the same model and data resume; other data under the same path start over
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(FirstCoordinateModel(fail_after=2), LandmarkSet.load(root), "all", batch_size=4,
                       out_dir=out, progress=False)
    same = FirstCoordinateModel()
    evaluate_model(same, LandmarkSet.load(root), "all", batch_size=4, out_dir=out, progress=False)
    assert sum(same.calls) == 8
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(FirstCoordinateModel(fail_after=2), LandmarkSet.load(root), "all", batch_size=4,
                       out_dir=out, progress=False)
    np.save(root / "landmarks.npy", np.load(root / "landmarks.npy")[::-1].copy())  # extracted again, other faces
    model = FirstCoordinateModel()
    result = evaluate_model(model, LandmarkSet.load(root), "all", batch_size=4, out_dir=out, progress=False)
    assert sum(model.calls) == 16
    fresh = evaluate_model(FirstCoordinateModel(), LandmarkSet.load(root), "all", batch_size=4, progress=False)
    assert result.records == fresh.records


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
    # --prior train on a set that is all evaluated: one line, before anything is loaded
    assert main(["eval", *common, "--out", str(tmp_path / "p"), "--mode", "score", "--prior", "train"]) == 2
    assert "--prior-data" in capsys.readouterr().err
    assert main(["eval", *common, "--out", str(tmp_path / "p"), "--prior", "train"]) == 2  # generate: no prior
    assert "--mode score or both" in capsys.readouterr().err
    assert main(["eval", *common, "--out", str(tmp_path / "p"), "--mode", "score", "--prior", "x.json"]) == 2
    assert "not uniform, train, a file or a folder" in capsys.readouterr().err
