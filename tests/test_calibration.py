"""Calibration maths of class scoring: ECE, reliability bins, NLL, prior estimate and adjustment."""

import math

import numpy as np
import pytest

from facephi.scoring.calibration import (
    adjust_by_prior,
    calibration_summary,
    estimate_prior,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

K = 8


def confident_rows(confidence: float, n: int, top: int = 0) -> np.ndarray:
    """``n`` rows with ``confidence`` on class ``top`` and the rest spread evenly."""
    rows = np.full((n, K), (1 - confidence) / (K - 1))
    rows[:, top] = confidence
    return rows


def calibrated_set() -> tuple[np.ndarray, np.ndarray]:
    """In every confidence bin, exactly that fraction of the argmax predictions is right."""
    probs, labels = [], []
    for confidence in (0.3, 0.5, 0.7, 0.9, 1.0):
        probs.append(confident_rows(confidence, 10))
        hits = round(confidence * 10)
        labels += [0] * hits + [1] * (10 - hits)
    return np.concatenate(probs), np.array(labels)


def test_ece_of_a_perfectly_calibrated_set_is_zero():
    probs, labels = calibrated_set()
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # and of a large random set drawn calibrated: close to 0
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.2, 1.0, 20000)
    probs = np.stack([confident_rows(c, 1)[0] for c in confidence])
    labels = np.where(rng.uniform(size=confidence.size) < confidence, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02


def test_ece_of_an_over_confident_set():
    probs = confident_rows(0.95, 20)
    labels = np.array([0] * 10 + [3] * 10)  # half right at 95 % confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.45)
    under = confident_rows(0.35, 20)
    assert expected_calibration_error(under, np.zeros(20, dtype=int)) == pytest.approx(0.65)


def test_reliability_bins_are_equal_width_and_right_closed():
    edge = np.linspace(0, 1, 16)[2]  # 2/15: the upper edge of bin 1, which holds it
    probs = np.concatenate([confident_rows(c, 1) for c in (0.21, edge, 0.5, 1.0)])
    rows = reliability_bins(probs, np.array([0, 1, 0, 0]))
    assert len(rows) == 15 and rows[0]["lower"] == 0.0 and rows[-1]["upper"] == 1.0
    assert all(r["upper"] - r["lower"] == pytest.approx(1 / 15) for r in rows)
    counts = {k: r["count"] for k, r in enumerate(rows) if r["count"]}
    assert counts == {1: 1, 3: 1, 7: 1, 14: 1}
    assert rows[1]["accuracy"] == 0.0 and rows[14]["accuracy"] == 1.0 and rows[0]["confidence"] is None
    assert sum(r["count"] for r in reliability_bins(probs, np.zeros(4, dtype=int), bins=3)) == 4


def test_negative_log_likelihood_known_value():
    probs = np.array([[0.8, 0.2], [0.25, 0.75], [0.5, 0.5]])
    expected = -(math.log(0.8) + math.log(0.25) + math.log(0.5)) / 3
    assert negative_log_likelihood(probs, np.array([0, 0, 1])) == pytest.approx(expected)
    # a zero probability of the true class is clipped, not infinite
    assert negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))


def test_summary_is_json_able():
    import json

    probs, labels = calibrated_set()
    summary = calibration_summary(probs, labels)
    assert set(summary) == {"ece", "nll", "mean_confidence", "bins", "reliability"}
    assert summary["bins"] == 15 and len(summary["reliability"]) == 15
    assert json.loads(json.dumps(summary)) == summary


def test_prior_estimate_and_adjustment():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(K), size=50)
    prior = estimate_prior(probs)
    assert prior.shape == (K,) and prior.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(prior, probs.mean(axis=0))
    adjusted = adjust_by_prior(probs, prior)
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0)
    expected = np.exp(np.log(probs) - np.log(prior))
    np.testing.assert_allclose(adjusted, expected / expected.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(adjust_by_prior(probs, np.full(K, 3.0)), probs)  # a uniform prior changes nothing


@pytest.mark.parametrize("probs, labels", [
    (np.ones((2, K)), np.zeros(2, dtype=int)),  # rows do not sum to 1
    (np.full((2, K), 1 / K), np.array([0, K])),  # label out of range
    (np.full((2, K), 1 / K), np.array([0.0, 1.0])),  # not integers
    (np.full((0, K), 1 / K), np.zeros(0, dtype=int)),  # empty
])
def test_bad_inputs_are_refused(probs, labels):
    with pytest.raises(ValueError):
        expected_calibration_error(probs, labels)


def test_bad_prior_is_refused():
    with pytest.raises(ValueError, match="prior"):
        adjust_by_prior(np.full((1, K), 1 / K), np.zeros(K))
