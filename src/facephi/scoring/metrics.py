"""Classification metrics shared by every Table-1 row (LLM answers and encoder classifiers alike).

Predictions are class indices, with ``-1`` for "no class" (an LLM answer without any class
keyword). Pure numpy.

Definitions (K classes, support = number of true samples of a class):

* ``accuracy``: fraction of samples whose prediction equals the truth (a miss is wrong).
* ``balanced_accuracy``: macro recall, the mean per-class recall over classes with support > 0.
* ``macro_f1``: mean per-class F1 over the same classes (F1 = 0 when a class is never predicted
  or never hit). Classes absent from the evaluated split are left out of both macro means
  (reported in ``per_class`` with ``support`` 0 and ``recall`` None).
* ``per_class``: recall, precision (None when the class is never predicted), F1, support and
  number of predictions.
* ``confusion``: int [K, K+1], rows = true class, columns = predicted class, last column = no
  class (missed).
* ``miss_rate``: fraction of predictions that are ``-1``.
* ``ambiguous_rate`` / ``accuracy_contains``: only for LLM answers (see ``facephi.scoring.keywords``);
  None for classifiers.
* ``intervals`` (with ``bootstrap=B``): percentile bootstrap intervals of accuracy, balanced accuracy
  and macro-F1 over ``B`` resamples of the samples (with replacement, seeded), at ``level``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from facephi.config import Config
from facephi.labels import CLASSES

MISS = -1
"""Prediction value meaning "the answer names no class"."""


def confusion_columns(y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """The confusion-matrix column of each prediction: its class, or ``num_classes`` for a miss (``-1``)."""
    return np.where(y_pred == MISS, num_classes, y_pred)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [K, K+1]: row = true class, column = predicted class, column K = missed (``-1``)."""
    columns = confusion_columns(y_pred, num_classes)
    matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(matrix, (y_true, columns), 1)
    return matrix


@dataclass
class ClassificationMetrics(Config):
    """Every number one evaluation reports; ``to_dict()`` is what ``metrics.json`` holds."""

    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    miss_rate: float
    per_class: dict[str, dict[str, Any]]
    confusion: list[list[int]]
    class_names: list[str]
    ambiguous_rate: float | None = None
    accuracy_contains: float | None = None
    intervals: dict[str, Any] | None = None


BOOTSTRAP_LEVEL = 0.95
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _rates(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of confusion matrices ``[B, K, K+1]`` (classes
    without support left out of the macro means, as in :func:`compute_metrics`)."""
    k = matrices.shape[1]
    hits = np.diagonal(matrices[:, :, :k], axis1=1, axis2=2).astype(np.float64)
    support = matrices.sum(axis=2).astype(np.float64)
    predicted = matrices[:, :, :k].sum(axis=1).astype(np.float64)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, hits / support, 0.0)
        f1 = np.where(present, 2 * hits / (support + predicted), 0.0)
    count = present.sum(axis=1)
    return {"accuracy": hits.sum(axis=1) / support.sum(axis=1),
            "balanced_accuracy": recall.sum(axis=1) / count, "macro_f1": f1.sum(axis=1) / count}


def resampled_rates(truth: np.ndarray, preds: Sequence[np.ndarray], num_classes: int, resamples: int = 1000,
                    seed: int = 0) -> list[dict[str, np.ndarray]]:
    """:data:`INTERVAL_METRICS` of each prediction vector in ``preds`` (class indices, ``-1`` =
    missed) on the same ``resamples`` bootstrap draws of the samples (with replacement, ``seed``):
    one dict of ``[resamples]`` arrays per vector, so that paired differences keep their pairing."""
    if resamples < 1:
        raise ValueError(f"bootstrap: need resamples >= 1, got {resamples}")
    cells = num_classes * (num_classes + 1)
    codes = [truth * (num_classes + 1) + confusion_columns(pred, num_classes) for pred in preds]
    rng = np.random.default_rng(seed)
    matrices = np.empty((len(codes), resamples, cells), dtype=np.int64)
    for b in range(resamples):
        draw = rng.integers(len(truth), size=len(truth))
        for i, code in enumerate(codes):
            matrices[i, b] = np.bincount(code[draw], minlength=cells)
    return [_rates(m.reshape(resamples, num_classes, num_classes + 1)) for m in matrices]


def percentile_interval(values: np.ndarray, level: float = BOOTSTRAP_LEVEL) -> list[float]:
    """The central ``level`` percentile interval ``[low, high]`` of bootstrap ``values``."""
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def bootstrap_intervals(truth: np.ndarray, pred: np.ndarray, num_classes: int, resamples: int = 1000,
                        level: float = BOOTSTRAP_LEVEL, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap intervals ``[low, high]`` of :data:`INTERVAL_METRICS` (class indices,
    ``-1`` = missed): ``resamples`` draws of the samples with replacement (``seed``)."""
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap: need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    (rates,) = resampled_rates(truth, [pred], num_classes, resamples, seed)
    out: dict[str, Any] = {name: percentile_interval(rates[name], level) for name in INTERVAL_METRICS}
    return {**out, "level": level, "resamples": resamples, "seed": seed}


def _validated(values: Sequence[int] | np.ndarray, name: str, low: int, num_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = (array < low) | (array >= num_classes)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} value(s) outside [{low}, {num_classes - 1}], "
            f"e.g. {int(array[bad][0])}"
        )
    return array


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    *,
    class_names: Sequence[str] = CLASSES,
    ambiguous: Sequence[bool] | np.ndarray | None = None,
    contains_correct: Sequence[bool] | np.ndarray | None = None,
    bootstrap: int = 0,
) -> ClassificationMetrics:
    """Metrics of class predictions ``y_pred`` (``-1`` = missed) against labels ``y_true``.

    ``ambiguous`` and ``contains_correct`` (one flag per sample, from the keyword matcher) add the
    ambiguous-answer rate and the lenient "contains" accuracy; ``bootstrap=B`` adds 95 % intervals
    from ``B`` resamples (:func:`bootstrap_intervals`, seed 0).
    """
    num_classes = len(class_names)
    truth = _validated(y_true, "y_true", 0, num_classes)
    pred = _validated(y_pred, "y_pred", MISS, num_classes)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has {truth.size} samples but y_pred has {pred.size}")
    if truth.size == 0:
        raise ValueError("no samples to evaluate")

    matrix = confusion_matrix(truth, pred, num_classes)
    hits = np.diag(matrix[:, :num_classes]).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix[:, :num_classes].sum(axis=0)

    per_class: dict[str, dict[str, Any]] = {}
    recalls, f1s = [], []
    for k, name in enumerate(class_names):
        recall = float(hits[k] / support[k]) if support[k] else None
        precision = float(hits[k] / predicted[k]) if predicted[k] else None
        both = support[k] + predicted[k]
        f1 = float(2 * hits[k] / both) if both else None
        per_class[name] = {
            "recall": recall, "precision": precision, "f1": f1,
            "support": int(support[k]), "predicted": int(predicted[k]),
        }
        if support[k]:
            recalls.append(recall)
            f1s.append(f1)

    def rate(flags: Sequence[bool] | np.ndarray | None, name: str) -> float | None:
        if flags is None:
            return None
        array = np.asarray(flags, dtype=bool)
        if array.shape != truth.shape:
            raise ValueError(f"{name} has {array.size} flags for {truth.size} samples")
        return float(array.mean())

    return ClassificationMetrics(
        n=int(truth.size),
        accuracy=float((truth == pred).mean()),
        balanced_accuracy=float(np.mean(recalls)),
        macro_f1=float(np.mean(f1s)),
        miss_rate=float((pred == MISS).mean()),
        per_class=per_class,
        confusion=matrix.tolist(),
        class_names=list(class_names),
        ambiguous_rate=rate(ambiguous, "ambiguous"),
        accuracy_contains=rate(contains_correct, "contains_correct"),
        intervals=bootstrap_intervals(truth, pred, num_classes, bootstrap) if bootstrap else None,
    )


OVERANSWER_RATIO = 1.5
"""A class answered for more than this many times its share of the samples is over-answered ..."""
SMALL_SHARE, SMALL_SHARE_CAP = 0.03, 0.05
"""... and a class whose share is below ``SMALL_SHARE`` when answered for more than ``SMALL_SHARE_CAP``
of the samples (issue 20's criterion on web-dev)."""


def answer_shares(metrics: ClassificationMetrics, ratio: float = OVERANSWER_RATIO, small_share: float = SMALL_SHARE,
                  small_cap: float = SMALL_SHARE_CAP) -> dict[str, dict[str, Any]]:
    """How often each class is answered against its share of the samples: per class ``share``
    (support / n), ``answered`` (predictions naming it / n; an answer naming no class names none),
    ``limit`` (``ratio * share``, or ``small_cap`` where the share is below ``small_share``) and
    ``within`` (``answered <= limit``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, row in metrics.per_class.items():
        share, answered = row["support"] / metrics.n, row["predicted"] / metrics.n
        limit = small_cap if share < small_share else ratio * share
        out[name] = {"share": share, "answered": answered, "count": row["predicted"], "support": row["support"],
                     "limit": limit, "within": answered <= limit}
    return out
