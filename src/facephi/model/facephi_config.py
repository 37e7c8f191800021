"""The configuration of a FacePhi model (its ``config.json``) and the output of its forward."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from facephi.config import Config
from facephi.data.templates import LANDMARK_TOKEN
from facephi.model.checkpoints import FACEPHI_CONFIG_TYPE
from facephi.model.llm import DEFAULT_LLM
from facephi.model.projector import ProjectorConfig
from facephi.utils.errors import FacePhiError

CONFIG_TYPE = FACEPHI_CONFIG_TYPE
"""``config_type`` field of a FacePhi model's ``config.json`` (encoders use their own)."""

@dataclass
class FacePhiConfig(Config):
    """Configuration of a FacePhi model (``config.json`` of a saved model)."""

    llm: str = DEFAULT_LLM
    gguf_file: str | None = None
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    landmark_token: str = LANDMARK_TOKEN
    encoder: dict[str, Any] = field(default_factory=dict)
    """The encoder's own configuration, for provenance (its weights live in ``encoder/``)."""
    dtype: str = "float32"
    max_length: int = 128
    """Token length of the training sequences (``PromptFormatter``)."""
    llm_weights: str = "base"
    """"base" (LLM as shipped), "full" (fine-tuned) or "lora" (base + adapter)."""
    lora: dict[str, Any] | None = None
    answer_only_head: bool = True
    answer_prior: list[float] | None = None
    """Class frequencies (``CLASSES`` order) of the LLM's training data, divided out of the answers and
    class probabilities with strength ``answer_prior_tau`` (``model/answer_prior.py``)."""
    answer_prior_tau: float = 0.0
    """τ of the answer prior: argmax log p − τ · log prior (0: the LLM's own answers)."""
    encoder_weight: float = 0.0
    """λ: the landmark encoder's own class log-probabilities, times λ, added to the answers' class words
    and the class scores (an ensemble of the LLM and its encoder's classifier; 0: off)."""

    config_type: ClassVar[str] = CONFIG_TYPE

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise FacePhiError(f"FacePhiConfig: unknown dtype {self.dtype!r}")
        return dtype


@dataclass
class FacePhiOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def encoder_config(encoder: nn.Module) -> dict[str, Any]:
    config = getattr(encoder, "config", None)
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return asdict(config) if is_dataclass(config) else {}
