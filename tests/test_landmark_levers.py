"""benchmarks/landmark_levers.py (and its landmark_sets.py): every row scored on every set at every τ, on a tiny synthetic set."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_loader import load_benchmark

levers = load_benchmark("landmark_levers")
face_sets = load_benchmark("landmark_sets")  # the module landmark_levers imports (one instance)


def synthetic(name: str, n: int, seed: int, missed: int = 0) -> "levers.FaceSet":
    """Faces around one mean shape; class c moves a block of landmarks along y (a learnable signal)."""
    rng = np.random.default_rng(seed)
    mean = np.random.default_rng(0).uniform(0.3, 0.7, (478, 3)).astype(np.float32)
    labels = np.arange(n) % 8
    points = mean + rng.normal(0, 0.002, (n, 478, 3)).astype(np.float32)
    for c in range(8):
        points[labels == c, 60 * c:60 * c + 60, 1] += 0.05
    votes = np.eye(8, dtype=np.float32)[labels] * 10
    return levers.FaceSet(name, points, np.full((n, 2), 48.0, np.float32), labels, votes,
                          np.full(missed, 5, dtype=np.int64))


@pytest.fixture(scope="module")
def run():
    settings = levers.Settings(epochs=3, hidden=32, batch=32, lr=3e-3, resamples=20)
    sets = [synthetic("valid", 48, 1), synthetic("test", 48, 2), synthetic("web", 40, 3, missed=8)]
    recropped = synthetic("web", 30, 4, missed=18)  # 10 faces lost by the re-crop
    train = synthetic("train", 256, 0)
    train.remeshed = [remeshed(train, 0.004)]
    results = levers.run_levers(levers.LEVERS, train, sets, settings, recropped, log=lambda _: None)
    return results, sets


def remeshed(faces: "levers.FaceSet", noise: float) -> "levers.FaceSet":
    """``faces`` with other landmark noise (as a re-mesh at another resolution gives)."""
    rng = np.random.default_rng(7)
    moved = faces.landmarks + rng.normal(0, noise, faces.landmarks.shape).astype(np.float32)
    return levers.FaceSet(faces.name, moved, faces.sizes, faces.labels, faces.votes)


def test_every_row_every_tau_every_set(run):
    results, sets = run
    assert list(results) == [lever.name for lever in levers.LEVERS]
    for by_tau in results.values():
        assert tuple(by_tau) == levers.TAUS
        for per_set in by_tau.values():
            assert set(per_set) == {"valid", "test", "web"}
            for metrics in per_set.values():
                assert metrics.intervals["accuracy"][0] <= metrics.accuracy <= metrics.intervals["accuracy"][1]


def test_missing_faces_count_as_wrong_answers(run):
    results, _ = run
    web = results[levers.BASE][0.0]["web"]
    assert web.n == 48 and web.miss_rate == pytest.approx(8 / 48)
    assert web.accuracy <= 40 / 48
    assert web.per_class["disgust"]["support"] == 5 + 8  # the 8 missed photos are disgust faces
    assert web.per_class["disgust"]["recall"] <= 5 / 13


def test_recrop_row_scores_the_recropped_set_in_place_of_web(run):
    results, _ = run
    recrop = next(lever.name for lever in levers.LEVERS if lever.recrop)
    assert results[recrop][0.0]["web"].miss_rate == pytest.approx(18 / 48)
    assert results[recrop][0.0]["test"].accuracy == results[levers.BASE][0.0]["test"].accuracy  # same model


def test_the_learnable_signal_is_learned(run):
    results, _ = run
    assert results[levers.BASE][0.0]["test"].accuracy > 0.5  # chance is 1/8


def test_tau_zero_is_plain_argmax_and_tau_shifts_to_rare_classes():
    log_probs = np.log(np.array([[0.6, 0.4], [0.3, 0.7], [0.55, 0.45]]))
    prior = np.array([0.9, 0.1])
    assert levers.answers(log_probs, prior, 0.0).tolist() == log_probs.argmax(1).tolist() == [0, 1, 0]
    assert levers.answers(log_probs, prior, 1.0).tolist() == [1, 1, 1]


def test_report_names_every_row_and_a_best_row(run):
    results, sets = run
    text = levers.report(results, [s.name for s in sets], ["# header", ""])
    for lever in levers.LEVERS:
        assert f"| {lever.name} | 0 |" in text
    assert "Best row" in text and "within the rule" in text


def test_failed_labels_reads_class_folders(tmp_path):
    (tmp_path / "failures.csv").write_text("path,split,reason,detail\nhappy/a.jpg,train,no face,x\n"
                                           "disgust/b.jpg,train,no face,x\n")
    assert face_sets.failed_labels(tmp_path).tolist() == [1, 5]
    (tmp_path / "failures.csv").write_text("path,split,reason,detail\nnowhere.jpg,train,no face,x\n")
    with pytest.raises(Exception, match="line 2: no class folder"):
        face_sets.failed_labels(tmp_path)


def test_remesh_rows_train_on_the_remeshes_and_need_them(run):
    results, sets = run
    remesh = [lever for lever in levers.LEVERS if lever.resampled]
    assert remesh and all(lever.name in results for lever in remesh)
    assert results[remesh[0].name][0.0]["valid"].accuracy > 0.5  # still learns the signal
    settings = levers.Settings(epochs=1, hidden=8, batch=32, resamples=5)
    with pytest.raises(ValueError, match="needs --resampled"):
        levers.run_levers(remesh[:1], synthetic("train", 64, 0), sets, settings, log=lambda _: None)


def test_train_draws_each_face_from_its_own_mesh_or_a_remesh(monkeypatch):
    """With a re-mesh far from the original, a batch mixes both, row for row (same face, same label)."""
    train = synthetic("train", 64, 0)
    far = levers.FaceSet("far", train.landmarks + 100.0, train.sizes, train.labels, train.votes)
    seen = []
    from facephi.model.landmark_mlp import LandmarkMLPEncoder

    original_forward = LandmarkMLPEncoder.forward

    def spy(self, x):
        if self.training:
            seen.append(x.detach().numpy().copy())
        return original_forward(self, x)

    monkeypatch.setattr(LandmarkMLPEncoder, "forward", spy)
    lever = levers.Lever("re-mesh", resampled=True, standardise=False)
    settings = levers.Settings(epochs=2, hidden=8, batch=32, resamples=5)
    levers.train(lever, train.landmarks, train, np.full(8, 1 / 8), 0, settings, [far.landmarks])
    batch = np.concatenate(seen)
    from_far = batch.mean(axis=(1, 2)) > 50
    assert 0.3 < from_far.mean() < 0.7  # about half of the faces from each


def test_remeshed_like_matches_faces_by_path_and_keeps_missed_ones(tmp_path):
    import csv

    from facephi.utils.errors import FacePhiError

    train = synthetic("FER+ Train", 10, 0)
    train.paths = [f"train/{i}.png" for i in range(10)]
    root = tmp_path / "ferplus-up96"
    root.mkdir()
    found = [9, 8, 7, 6, 5, 3, 2, 1, 0]  # face 4 not found by the re-mesh; another order
    other = np.random.default_rng(1).uniform(0.2, 0.8, (len(found), 478, 3)).astype(np.float32)
    np.save(root / "landmarks.npy", other)
    with open(root / "samples.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["index", "path", "label", "split", "width", "height"],
                                  *[[row, f"train/{i}.png", "neutral", "train", 48, 48] for row, i in enumerate(found)]])
    got = face_sets.remeshed_like(train, root)
    np.testing.assert_array_equal(got.landmarks[found], other)
    np.testing.assert_array_equal(got.landmarks[4], train.landmarks[4])
    assert list(got.labels) == list(train.labels)
    train.paths = [f"valid/{i}.png" for i in range(10)]
    with pytest.raises(FacePhiError, match="holds only 0 of the 10 Train faces"):
        face_sets.remeshed_like(train, root)


def test_remesh_shift_measures_only_the_faces_the_remesh_found():
    train = synthetic("train", 64, 0)
    other = remeshed(train, 0.004)
    other.landmarks[:16] = train.landmarks[:16]  # not re-found: their own landmarks
    train.remeshed = [other, remeshed(train, 0.008)]
    (shift, compared), (more, _) = face_sets.remesh_shifts(train)
    assert compared == 48 and 0 < shift < 10
    assert more > shift
