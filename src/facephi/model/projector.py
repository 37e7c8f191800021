"""Projector from the landmark feature ``e`` to the LLM token embedding(s) ``e'`` (figure 1: one token;
``tokens = K > 1``: K token embeddings that replace K ``<landmark>`` placeholders, an extension)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from facephi.config import Config


@dataclass
class ProjectorConfig(Config):
    """2-layer MLP ``input_dim -> hidden_dim -> tokens x output_dim`` with GELU; ``hidden_dim`` None =
    ``output_dim``; ``tokens``: landmark token embeddings per face (the paper: 1)."""

    input_dim: int = 256
    output_dim: int = 576
    hidden_dim: int | None = None
    tokens: int = 1

    def check(self) -> None:
        if self.tokens < 1:
            raise self.error("tokens", f"must be >= 1, got {self.tokens}")


class Projector(nn.Module):
    """``[B, input_dim] -> [B, tokens, output_dim]``: Linear, GELU, Linear."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim or config.output_dim
        self.net = nn.Sequential(nn.Linear(config.input_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, config.tokens * config.output_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).unflatten(-1, (self.config.tokens, self.config.output_dim))
