"""Calibration of class probabilities (class scoring of ``facephi eval --mode score``). Pure numpy.

Inputs are probabilities ``[N, K]`` (rows sum to 1) and true class indices ``[N]``.

* ``expected_calibration_error``: the samples are put into ``bins`` equal-width bins of their
  confidence (the max probability; bin ``i`` holds confidences in ``(i/bins, (i+1)/bins]``, a
  confidence of 0 in the first bin); ECE = ``sum_b n_b / N * |accuracy_b - confidence_b|`` with
  the mean confidence and the accuracy of the argmax in each bin (Guo et al., 2017).
* ``negative_log_likelihood``: mean of ``-log p(true class)``, the probability clipped at
  ``eps = 1e-12`` (so one confidently wrong sample costs at most about 27.6 nats).
* ``estimate_prior``: the mean predicted probability per class (the prior of logit adjustment).
* ``adjust_by_prior``: ``p_k / prior_k ** tau`` renormalised, i.e. the softmax of ``log p - tau · log
  prior`` (logit adjustment, Menon et al. 2021; ``tau = 1`` divides the prior out entirely).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ECE_BINS = 15
"""Equal-width confidence bins of the ECE and the reliability diagram."""

NLL_EPS = 1e-12
"""Smallest probability of the true class counted by ``negative_log_likelihood``."""


def _checked(probabilities: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probabilities must be [N, K] with N, K > 0, got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of probabilities must sum to 1")
    if labels is None:
        return probs, None
    truth = np.asarray(labels)
    if truth.shape != (probs.shape[0],) or (truth.size and not np.issubdtype(truth.dtype, np.integer)):
        raise ValueError(f"labels must be {probs.shape[0]} integer class indices, got shape {truth.shape}")
    truth = truth.astype(np.int64)
    if ((truth < 0) | (truth >= probs.shape[1])).any():
        raise ValueError(f"labels must lie in [0, {probs.shape[1] - 1}]")
    return probs, truth


def reliability_bins(probabilities: Any, labels: Any, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per confidence bin: ``lower``, ``upper``, ``count``, mean ``confidence`` and ``accuracy``
    (None for empty bins) - the points of a reliability diagram."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    probs, truth = _checked(probabilities, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lower, upper]
    rows = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": float(confidence[inside].mean()) if count else None,
                     "accuracy": float(correct[inside].mean()) if count else None})
    return rows


def expected_calibration_error(probabilities: Any, labels: Any, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins (see the module docstring)."""
    rows = reliability_bins(probabilities, labels, bins)
    total = sum(row["count"] for row in rows)
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]))


def negative_log_likelihood(probabilities: Any, labels: Any, eps: float = NLL_EPS) -> float:
    """Mean ``-log p(true class)`` (nats), the probability clipped at ``eps``."""
    probs, truth = _checked(probabilities, labels)
    assert truth is not None
    return float(-np.log(np.maximum(probs[np.arange(len(truth)), truth], eps)).mean())


def calibration_summary(probabilities: Any, labels: Any, bins: int = ECE_BINS) -> dict[str, Any]:
    """JSON-able calibration block: ``ece``, ``nll``, ``mean_confidence``, ``bins`` and the
    ``reliability`` rows (:func:`reliability_bins`)."""
    probs, _ = _checked(probabilities, labels)
    return {"ece": expected_calibration_error(probs, labels, bins), "nll": negative_log_likelihood(probs, labels),
            "mean_confidence": float(probs.max(axis=1).mean()), "bins": int(bins),
            "reliability": reliability_bins(probs, labels, bins)}


def estimate_prior(probabilities: Any) -> np.ndarray:
    """The mean predicted probability per class ``[K]`` (sums to 1)."""
    probs, _ = _checked(probabilities)
    return probs.mean(axis=0)


def adjust_by_prior(probabilities: Any, prior: Sequence[float] | np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Logit adjustment: ``softmax(log p - tau * log prior)`` = ``p / prior ** tau`` renormalised per row."""
    probs, _ = _checked(probabilities)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (probs.shape[1],) or not np.isfinite(prior).all() or (prior <= 0).any():
        raise ValueError(f"prior must be {probs.shape[1]} finite positive numbers, got {prior.tolist()}")
    if not (np.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    adjusted = probs / prior ** tau
    return adjusted / adjusted.sum(axis=1, keepdims=True)
