"""benchmarks/landmark_levers.py: every row scored on every set at every τ, on a tiny synthetic set."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_loader import load_benchmark

levers = load_benchmark("landmark_levers")


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
    results = levers.run_levers(levers.LEVERS, synthetic("train", 256, 0), sets, settings, recropped,
                                log=lambda _: None)
    return results, sets


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
    assert levers.failed_labels(tmp_path).tolist() == [1, 5]
    (tmp_path / "failures.csv").write_text("path,split,reason,detail\nnowhere.jpg,train,no face,x\n")
    with pytest.raises(Exception, match="line 2: no class folder"):
        levers.failed_labels(tmp_path)
