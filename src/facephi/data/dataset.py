"""Torch dataset of normalised landmarks with deterministic, per-epoch augmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from facephi.landmarks.normalize import Normalizer

if TYPE_CHECKING:  # pragma: no cover
    from facephi.landmarks.augment import Augmenter
    from facephi.landmarks.store import LandmarkSet


class LandmarkDataset(Dataset):
    """Samples ``indices`` of a :class:`LandmarkSet`, normalised once up front.

    Item ``i`` is ``{"points": FloatTensor[478, 3], "label": int, "index": int}`` where ``index``
    is the row in the landmark set. With an ``augmenter``, sample ``index`` in epoch ``e`` is
    augmented with ``np.random.default_rng([seed, e, index])``: the same result in every run and
    every worker, whatever the shuffling. Call :meth:`set_epoch` at the start of each epoch.
    """

    def __init__(
        self,
        landmark_set: "LandmarkSet",
        indices: np.ndarray | list[int],
        normalizer: Normalizer,
        augmenter: "Augmenter | None" = None,
        seed: int = 0,
    ) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise ValueError("indices must be one-dimensional")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(landmark_set.labels)):
            raise ValueError(f"indices out of range for a landmark set of {len(landmark_set.labels)} samples")
        self.points = normalizer(landmark_set.landmarks[self.indices], landmark_set.sizes[self.indices])
        self.labels = np.asarray(landmark_set.labels[self.indices], dtype=np.int64)
        self.augmenter = augmenter
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = int(self.indices[item])
        points = self.points[item]
        if self.augmenter is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            points = self.augmenter(points, rng)
        return {
            "points": torch.as_tensor(np.asarray(points, dtype=np.float32)),
            "label": int(self.labels[item]),
            "index": index,
        }
