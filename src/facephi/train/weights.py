"""Class weights and the class prior from label counts: the weights are shared by ``facephi align
--objective classify`` (cross-entropy weights) and ``facephi train`` (the weight of each answer's
loss); the prior is that of ``facephi align --logit-adjust``."""

from __future__ import annotations

import numpy as np
import torch

from facephi.train.config import CLASS_WEIGHTS


def class_weights(labels: np.ndarray, num_classes: int, kind: str = "balanced") -> torch.Tensor:
    """Class weights ``[num_classes]``; 0 for classes absent from ``labels``.

    ``"balanced"``: ``N / (C_present · n_c)`` (scikit-learn's); ``"sqrt"``: its square root, a
    milder correction that keeps more of the accuracy on the frequent classes.
    """
    if kind == "none" or kind not in CLASS_WEIGHTS:
        raise ValueError(f"class weights must be 'balanced' or 'sqrt', got {kind!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    if kind == "sqrt":
        weights = np.sqrt(weights)
    return torch.tensor(weights, dtype=torch.float32)


def class_prior(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """The class frequencies ``n_c / N`` of ``labels`` ``[num_classes]`` (0 for absent classes)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if counts.sum() == 0:
        raise ValueError("no labels to estimate a class prior from")
    return torch.tensor(counts / counts.sum(), dtype=torch.float32)
