"""A landmark MLP: every coordinate of the aligned face, standardised, through a small MLP.

MediaPipe's 478 landmarks have a fixed order, so a face is a fixed-length vector. Standardising each
coordinate by its mean and standard deviation over the training faces turns it into "how far this
landmark is from where it usually is", which is what an expression changes. The MLP sees every
landmark at once (no grouping); it is the encoder that generalises best beyond FER+ in
``benchmarks/results/webdev.md``. Same interface as :class:`~facephi.model.pointmlp.PointMLPEncoder`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from facephi.config import Config
from facephi.presets import LANDMARK_MLP_PRESETS, NUM_LANDMARKS, lookup


@dataclass
class LandmarkMLPConfig(Config):
    """Hyper-parameters of :class:`LandmarkMLPEncoder` (defaults = the ``landmark-mlp`` preset)."""

    num_points: int = NUM_LANDMARKS
    in_channels: int = 3
    hidden_dim: int = 512
    layers: int = 2
    dropout: float = 0.3
    feature_dim: int = 256

    def check(self) -> None:
        """Positive sizes (``ValueError``, like the rest of the model code)."""
        for name in ("num_points", "in_channels", "hidden_dim", "layers", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "LandmarkMLPConfig":
        """``"landmark-mlp"``, with optional field overrides."""
        return cls(**{**copy.deepcopy(lookup(LANDMARK_MLP_PRESETS, name, "landmark MLP preset")), **overrides})


class LandmarkMLPEncoder(nn.Module):
    """``[B, N, 3]`` normalised landmarks → ``[B, feature_dim]`` feature ``e``."""

    needs_landmark_statistics = True

    def __init__(self, config: LandmarkMLPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LandmarkMLPConfig()
        width = config.num_points * config.in_channels
        self.register_buffer("input_mean", torch.zeros(width))
        self.register_buffer("input_std", torch.ones(width))
        layers: list[nn.Module] = []
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_dim
        layers.append(nn.Linear(width, config.feature_dim))
        self.mlp = nn.Sequential(*layers)

    @torch.no_grad()
    def fit_landmark_statistics(self, points: torch.Tensor) -> None:
        """Per-coordinate mean / std of training landmarks ``[N, num_points, in_channels]``
        (before augmentation); a floor keeps coordinates that barely move from exploding."""
        config = self.config
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.ndim != 3 or points.shape[1:] != (config.num_points, config.in_channels) or len(points) < 2:
            raise ValueError(f"expected at least 2 samples [N, {config.num_points}, "
                             f"{config.in_channels}], got {list(points.shape)}")
        flat = points.flatten(1)
        std = flat.std(dim=0)
        self.input_mean.copy_(flat.mean(dim=0))
        self.input_std.copy_(std.clamp_min(max(float(std.mean()) * 0.1, 1e-6)))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        config = self.config
        if points.ndim != 3 or points.shape[1:] != (config.num_points, config.in_channels):
            raise ValueError(f"expected points [B, {config.num_points}, {config.in_channels}], "
                             f"got {list(points.shape)}")
        return self.mlp((points.flatten(1) - self.input_mean) / self.input_std)
