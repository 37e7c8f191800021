"""benchmarks/prior_em.py: EM recovers a shifted class prior from a calibrated classifier's probabilities."""

from __future__ import annotations

import numpy as np

from benchmark_loader import load_benchmark

prior_em = load_benchmark("prior_em")


def posteriors(trained_under: np.ndarray, drawn_under: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Exact posteriors, for a classifier trained under ``trained_under``, of faces drawn under
    ``drawn_under`` from 3 overlapping unit-variance Gaussian classes."""
    rng = np.random.default_rng(seed)
    means = np.array([-1.0, 0.0, 1.0])
    labels = rng.choice(3, size=n, p=drawn_under)
    likelihood = np.exp(-0.5 * (rng.normal(means[labels], 1.0)[:, None] - means) ** 2)
    return likelihood * trained_under / (likelihood * trained_under).sum(1, keepdims=True)


def test_em_recovers_the_prior_of_a_shifted_set():
    train, target = np.array([0.6, 0.3, 0.1]), np.array([0.1, 0.3, 0.6])
    probs = posteriors(train, target, 20000, 1)
    np.testing.assert_allclose(prior_em.em_prior(probs, train), target, atol=0.03)
    assert np.abs(probs.mean(0) - target).max() > 0.1  # the plain mean is far off: EM did the work


def test_em_keeps_the_training_prior_on_its_own_distribution():
    train = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(prior_em.em_prior(posteriors(train, train, 20000, 2), train), train, atol=0.02)
