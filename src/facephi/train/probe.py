"""Frozen-feature evaluation of landmark encoders, and linear probes.

A linear probe is a standardised multinomial logistic regression (scikit-learn) on frozen
features. Used for the per-epoch linear-probe accuracy of ``facephi align`` and by the encoder benchmark
(probe on aligned features, logistic regression on flattened landmarks). Hyper-parameters are
chosen on Valid only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from facephi.scoring.metrics import ClassificationMetrics, compute_metrics
from facephi.labels import CLASSES

if TYPE_CHECKING:  # pragma: no cover
    from facephi.model.encoder import LandmarkEncoder


@dataclass
class ProbeResult:
    """A fitted probe, its hyper-parameters and its metrics on the selection split."""

    model: object  # sklearn Pipeline(StandardScaler, LogisticRegression)
    C: float
    class_weight: str | None
    valid: ClassificationMetrics

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(features), dtype=np.int64)


def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    C: float = 1.0,
    class_weight: str | None = None,
    max_iter: int = 500,
    seed: int = 0,
):
    """Fit ``StandardScaler → LogisticRegression`` (lbfgs, multinomial) and return the pipeline."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError("a linear probe needs at least two classes in its training labels")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    return model


def select_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    valid_x: np.ndarray,
    valid_y: np.ndarray,
    Cs: Sequence[float] = (1.0,),
    class_weights: Sequence[str | None] = (None,),
    metric: str = "accuracy",
    class_names: Sequence[str] = CLASSES,
    max_iter: int = 500,
    seed: int = 0,
) -> ProbeResult:
    """Grid over ``Cs`` × ``class_weights``; keep the probe with the best Valid ``metric``."""
    best: ProbeResult | None = None
    valid_x = np.asarray(valid_x, dtype=np.float64).reshape(len(valid_x), -1)
    for class_weight in class_weights:
        for C in Cs:
            model = fit_linear_probe(train_x, train_y, C=C, class_weight=class_weight, max_iter=max_iter, seed=seed)
            predictions = np.asarray(model.predict(valid_x), dtype=np.int64)
            metrics = compute_metrics(valid_y, predictions, class_names=class_names)
            if best is None or getattr(metrics, metric) > getattr(best.valid, metric):
                best = ProbeResult(model=model, C=float(C), class_weight=class_weight, valid=metrics)
    if best is None:
        raise ValueError("select_linear_probe: empty hyper-parameter grid")
    return best


@torch.no_grad()
def encode_features(
    model: "LandmarkEncoder", points: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``e`` ``[N, 256]`` and class logits ``[N, C]`` of normalised landmarks (eval mode)."""
    was_training = model.training
    model.eval()
    features, logits = [], []
    for start in range(0, len(points), batch_size):
        batch = torch.as_tensor(points[start : start + batch_size], dtype=torch.float32)
        feature = model(batch)
        features.append(feature)
        logits.append(model.logits_from_features(feature))
    model.train(was_training)
    if not features:
        return np.zeros((0, model.feature_dim), np.float32), np.zeros((0, len(model.config.classes)), np.float32)
    return torch.cat(features).numpy(), torch.cat(logits).numpy()


def evaluate_split(
    model: "LandmarkEncoder",
    points: np.ndarray,
    labels: np.ndarray,
    probe_train: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Head accuracy / balanced accuracy / macro-F1 and, given ``probe_train`` (features, labels),
    the accuracy of a logistic-regression probe on frozen features."""
    features, logits = encode_features(model, points, batch_size)
    classes = model.config.classes
    head = compute_metrics(labels, logits.argmax(1), class_names=classes)
    result = {"accuracy": head.accuracy, "balanced_accuracy": head.balanced_accuracy, "macro_f1": head.macro_f1}
    if probe_train is not None:
        probe = fit_linear_probe(*probe_train, seed=seed)
        probe_metrics = compute_metrics(labels, probe.predict(features), class_names=classes)
        result["probe_accuracy"] = probe_metrics.accuracy
        result["probe_balanced_accuracy"] = probe_metrics.balanced_accuracy
    return result
