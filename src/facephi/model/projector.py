"""Projector from the landmark feature ``e`` to one LLM token embedding ``e'`` (figure 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from facephi.config import Config


@dataclass
class ProjectorConfig(Config):
    """2-layer MLP ``input_dim -> hidden_dim -> output_dim`` with GELU; ``hidden_dim`` None = ``output_dim``."""

    input_dim: int = 256
    output_dim: int = 576
    hidden_dim: int | None = None


class Projector(nn.Module):
    """``[B, input_dim] -> [B, output_dim]``: Linear, GELU, Linear."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim or config.output_dim
        self.net = nn.Sequential(nn.Linear(config.input_dim, hidden), nn.GELU(), nn.Linear(hidden, config.output_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
