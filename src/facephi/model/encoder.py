"""The landmark encoder: a backbone (PointMLP or the landmark MLP) + its landmark normaliser + an
objective-specific head.

``objective="align"`` (ULIP/CLIP feature alignment, paper section 3.3): a bias-free projection of
the 256-d feature to the text tower's dimension, a learnable logit scale, and a buffer with one
caption embedding per class, so zero-shot class logits need no text tower at inference.
``objective="classify"`` (the paper's ablation): a linear classifier on the 256-d feature.

A checkpoint folder holds ``model.safetensors`` and ``config.json`` only: no pickle, nothing is
executed on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from facephi.config import Config, setting
from facephi.labels import CLASSES
from facephi.landmarks.normalize import Normalizer
from facephi.model.checkpoints import ENCODER, ENCODER_CONFIG_TYPE, check_model_dir
from facephi.model.losses import init_logit_scale, logit_scale_value
from facephi.model.landmark_mlp import LandmarkMLPConfig, LandmarkMLPEncoder
from facephi.model.pointmlp import PointMLPConfig, PointMLPEncoder
from facephi.presets import LANDMARK_MLP_PRESETS
from facephi.presets import OBJECTIVES
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_path, write_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONFIG_TYPE = ENCODER_CONFIG_TYPE
BACKBONES: dict[str, tuple[type[Config], type[nn.Module]]] = {
    "pointmlp": (PointMLPConfig, PointMLPEncoder),
    "landmark-mlp": (LandmarkMLPConfig, LandmarkMLPEncoder),
}
"""Backbone kinds: their config class and module."""


def backbone_config(encoder: str, options: dict[str, Any]) -> tuple[str, Config]:
    """The backbone kind and config of a named encoder preset (``ENCODERS``) with field overrides."""
    if encoder in LANDMARK_MLP_PRESETS:
        return "landmark-mlp", LandmarkMLPConfig.preset(encoder, **options)
    return "pointmlp", PointMLPConfig.preset(encoder, **options)


@dataclass
class LandmarkEncoderConfig(Config):
    """Everything needed to rebuild a :class:`LandmarkEncoder` (JSON-able).

    Attributes:
        backbone_type: the backbone kind, a key of ``BACKBONES``.
        backbone: its config as a dict (``PointMLPConfig`` / ``LandmarkMLPConfig``).
        objective: ``"align"`` or ``"classify"``.
        classes: class names, index order of the logits.
        normalizer: ``Normalizer.to_dict()`` (template included); ``None`` = inputs already normalised.
        text_tower: name/path of the text tower whose caption embeddings are stored (align only).
        text_dim: its embedding size = the projection's output size (align only).
        caption_templates: the caption templates averaged per class (align only).
        metrics: evaluation results (filled by training).
        training: a summary of how it was trained (filled by training).
    """

    backbone_type: str = setting("pointmlp", choices=tuple(BACKBONES), cli=False, help="the backbone kind")
    backbone: dict[str, Any] = field(default_factory=lambda: PointMLPConfig.preset("pointmlp").to_dict())
    objective: str = setting("align", choices=OBJECTIVES, cli=False, help="how the encoder was trained (its head)")
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    normalizer: dict[str, Any] | None = None
    text_tower: str | None = None
    text_dim: int = 384
    caption_templates: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    config_type: ClassVar[str] = CONFIG_TYPE

    def check(self) -> None:
        if not self.classes:
            raise self.error("classes", "must not be empty")
        if self.text_dim <= 0:
            raise self.error("text_dim", f"must be positive, got {self.text_dim}")


class LandmarkEncoder(nn.Module):
    """Landmark encoder (PointMLP or landmark MLP backbone) with an alignment or classification head.

    ``forward(points) -> [B, 256]`` is the feature ``e`` fed to the LLM projector;
    ``class_logits(points) -> [B, C]`` classifies (zero-shot via caption embeddings when aligned).
    ``points`` are normalised landmarks ``[B, 478, 3]``; :meth:`normalize` prepares raw ones.
    """

    def __init__(self, config: LandmarkEncoderConfig) -> None:
        super().__init__()
        self.config = config
        config_class, backbone_class = BACKBONES[config.backbone_type]
        self.backbone_config = config_class.from_dict(config.backbone)
        self.backbone = backbone_class(self.backbone_config)
        self.normalizer = Normalizer.from_dict(config.normalizer) if config.normalizer else None
        num_classes = len(config.classes)
        if config.objective == "align":
            self.projection = nn.Linear(self.feature_dim, config.text_dim, bias=False)
            nn.init.normal_(self.projection.weight, std=self.feature_dim**-0.5)
            self.logit_scale = init_logit_scale()
            self.register_buffer("class_text_embeddings", torch.zeros(num_classes, config.text_dim))
        else:
            self.classifier = nn.Linear(self.feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        """Size of the feature ``e`` (256 for both backbone presets)."""
        return int(self.backbone_config.feature_dim)

    @property
    def objective(self) -> str:
        return self.config.objective

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Normalised landmarks ``[B, P, 3]`` → features ``[B, feature_dim]``."""
        return self.backbone(points)

    def embed(self, points: torch.Tensor) -> torch.Tensor:
        """Aligned encoder only: unit-norm landmark embeddings in the text space ``[B, text_dim]``."""
        self._require("align", "embed")
        return F.normalize(self.projection(self.forward(points)), dim=-1)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, C]`` from backbone features ``[B, feature_dim]``."""
        if self.objective == "align":
            embeddings = F.normalize(self.projection(features), dim=-1)
            texts = F.normalize(self.class_text_embeddings, dim=-1)
            return logit_scale_value(self.logit_scale) * embeddings @ texts.t()
        return self.classifier(features)

    def class_logits(self, points: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, C]``: zero-shot caption similarity (align) or the classifier (classify)."""
        return self.logits_from_features(self.forward(points))

    def set_class_text_embeddings(self, embeddings: torch.Tensor) -> None:
        """Store the per-class caption embeddings ``[C, text_dim]`` used by zero-shot logits."""
        self._require("align", "set_class_text_embeddings")
        expected = tuple(self.class_text_embeddings.shape)
        if tuple(embeddings.shape) != expected:
            raise ValueError(f"class text embeddings must be {expected}, got {tuple(embeddings.shape)}")
        self.class_text_embeddings.copy_(F.normalize(embeddings.float(), dim=-1))

    def normalize(self, raw: np.ndarray, sizes: np.ndarray | None) -> torch.Tensor:
        """Raw MediaPipe landmarks ``[..., 478, 3]`` (+ image sizes) → normalised float tensor."""
        if self.normalizer is None:
            raise FacePhiError("this encoder has no normaliser: pass already normalised landmarks")
        return torch.from_numpy(self.normalizer(raw, sizes))

    def _require(self, objective: str, what: str) -> None:
        if self.objective != objective:
            raise ValueError(f"{what} needs objective={objective!r}, this encoder is {self.objective!r}")

    # -- checkpoints ------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` atomically into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "config_type": CONFIG_TYPE})
        write_json(directory / CONFIG_NAME, self.config.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "LandmarkEncoder":
        """Load a folder written by :meth:`save_pretrained` (safetensors + JSON only)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        check_model_dir(directory, flag=None, expect=ENCODER)  # complete, readable files
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FacePhiError(f"{config_path}: invalid landmark encoder config ({exc})") from exc
        config = LandmarkEncoderConfig.from_dict(data, source=str(config_path))
        model = cls(config)
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise FacePhiError(f"{weights_path}: unreadable safetensors file ({exc})") from exc
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FacePhiError(f"{weights_path}: weights do not match {config_path} ({exc})") from exc
        model.eval()
        return model
