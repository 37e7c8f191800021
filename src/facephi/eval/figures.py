"""The figures of an evaluation computed from its records: class-scoring blocks and all photos.

* :func:`score_block`: metrics of the scored argmax (optionally after logit adjustment by a prior)
  plus calibration, the ``score`` / ``score_prior_corrected`` blocks of ``metrics.json``;
* :func:`all_photos_block`: the ``all_photos`` block, metrics over the faces and the photos without
  a face (predicted: no class) of the top-level predictions and of each class-scoring block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facephi.eval.results import BOOTSTRAP_RESAMPLES, record_probabilities, record_truth
from facephi.scoring.calibration import adjust_by_prior, calibration_summary
from facephi.scoring.metrics import MISS, compute_metrics


def all_photos_block(records: list[dict[str, Any]], no_face_labels: np.ndarray,
                     blocks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Metrics over faces and photos without a face (predicted: no class), of the top-level
    predictions and of each class-scoring block's."""
    truth = np.concatenate([record_truth(records), no_face_labels])
    misses = np.full(len(no_face_labels), MISS, dtype=np.int64)

    def metrics(predicted: np.ndarray, flags: bool = False) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if flags:  # keyword matching: a photo without an answer is neither ambiguous nor lenient-correct
            none = [False] * len(no_face_labels)
            extra = {"ambiguous": [r["ambiguous"] for r in records] + none,
                     "contains_correct": [r["correct_contains"] for r in records] + none}
        return compute_metrics(truth, np.concatenate([predicted, misses]), bootstrap=BOOTSTRAP_RESAMPLES,
                               **extra).to_dict()

    top = np.array([r["predicted_index"] for r in records], dtype=np.int64)
    out = metrics(top, flags="ambiguous" in records[0])
    for key, predicted in blocks.items():
        out[key] = metrics(predicted)
    return out


def scored_probabilities(records: list[dict[str, Any]], prior: np.ndarray | None = None,
                         tau: float = 1.0) -> np.ndarray:
    """The records' class probabilities ``[N, 8]``, with ``prior ** tau`` divided out where given."""
    probabilities = record_probabilities(records)
    return probabilities if prior is None else adjust_by_prior(probabilities, prior, tau)


def score_block(records: list[dict[str, Any]], prior: np.ndarray | None = None, tau: float = 1.0) -> dict[str, Any]:
    """Metrics of the scored argmax plus calibration, from the records' ``scores``."""
    probabilities, truth = scored_probabilities(records, prior, tau), record_truth(records)
    metrics = compute_metrics(truth, probabilities.argmax(axis=1), bootstrap=BOOTSTRAP_RESAMPLES)
    return {**metrics.to_dict(), "calibration": calibration_summary(probabilities, truth)}
