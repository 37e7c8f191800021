"""A FacePhi model's folder: written by ``save_model``, read back by ``load_parts``.

Layout::

    config.json              FacePhiConfig
    encoder/                 LandmarkEncoder.save_pretrained
    projector.safetensors
    tokenizer/               tokenizer with <landmark> and [PAD]
    llm/                     full LLM weights (HF format) - when the LLM was fine-tuned or save_llm=True
    adapter/                 LoRA weights (adapter.safetensors, keyed by LLM parameter names;
                             hyper-parameters in config.lora) - when stage 2 used LoRA

Without ``llm/`` the base LLM is referenced by ``config.llm`` / ``config.gguf_file`` and loaded
with ``load_language_model`` (the rows of the added tokens are initialised deterministically, so
the reloaded model is identical). Everything is safetensors/JSON; loading never executes code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from facephi.model.checkpoints import FACEPHI, check_model_dir
from facephi.model.facephi_config import FacePhiConfig
from facephi.model.llm import load_causal_lm, load_language_model
from facephi.model.lora import lora_state_dict
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_dir, read_json, write_json


def save_model(model: Any, directory: str | os.PathLike[str], save_llm: bool | None = None,
               weights_dtype: str | None = None) -> None:
    """Write ``model`` (a ``FacePhiModel``) to ``directory`` atomically; see
    ``FacePhiModel.save_pretrained``."""
    store = getattr(torch, weights_dtype) if weights_dtype else None
    if store is not None and not isinstance(store, torch.dtype):
        raise FacePhiError(f"save_pretrained: unknown weights_dtype {weights_dtype!r}")

    def stored(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(store) if store is not None else v).contiguous() for k, v in tensors.items()}

    directory, config = Path(directory), model.config
    if save_llm is None:
        save_llm = config.llm_weights == "full"
    if config.llm_weights == "full" and not save_llm:
        raise FacePhiError("save_pretrained: the LLM was fine-tuned; its weights must be saved (save_llm=True)")
    if config.llm_weights == "lora" and save_llm:
        raise FacePhiError("save_pretrained: with LoRA only the adapter is saved (save_llm must not be True)")
    with atomic_dir(directory) as tmp:
        model.encoder.save_pretrained(tmp / "encoder")
        save_file(stored(model.projector.state_dict()), tmp / "projector.safetensors")
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if config.llm_weights == "lora":
            (tmp / "adapter").mkdir()
            save_file(stored(lora_state_dict(model.llm)), tmp / "adapter" / "adapter.safetensors")
        elif save_llm:
            model.llm.save_pretrained(tmp / "llm")
        write_json(tmp / "config.json", config.to_dict())


@dataclass
class SavedParts:
    """What a model folder holds, loaded: the model is ``FacePhiModel(config, encoder, llm, tokenizer)``
    with ``projector`` weights and, for ``llm_weights == "lora"``, the ``adapter`` weights."""

    config: FacePhiConfig
    encoder: nn.Module
    llm: Any
    tokenizer: Any
    projector: dict[str, torch.Tensor]
    adapter: dict[str, torch.Tensor] | None


def load_parts(directory: str | os.PathLike[str],
               encoder_loader: Callable[[Path], nn.Module] | None = None) -> SavedParts:
    """Read a model folder, checked complete first (``check_model_dir``) before the LLM is loaded."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    check_model_dir(directory, flag=None, expect=FACEPHI)
    try:
        data = read_json(directory / "config.json")
    except ValueError as exc:
        raise FacePhiError(str(exc)) from exc
    config = FacePhiConfig.from_dict(data, source=str(directory / "config.json"))
    if encoder_loader is None:
        from facephi.model.encoder import LandmarkEncoder

        encoder_loader = LandmarkEncoder.from_pretrained
    encoder = encoder_loader(directory / "encoder")
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
    if (directory / "llm").is_dir():
        llm = load_causal_lm(str(directory / "llm"), dtype=config.torch_dtype)
    else:
        llm, _ = load_language_model(config.llm, config.gguf_file, dtype=config.torch_dtype)
    adapter = None
    if config.llm_weights == "lora":
        if not (directory / "adapter").is_dir():
            raise FacePhiError(f"{directory}: config says llm_weights='lora' but adapter/ is missing")
        adapter = load_file(directory / "adapter" / "adapter.safetensors")
    return SavedParts(config, encoder, llm, tokenizer, load_file(directory / "projector.safetensors"), adapter)
