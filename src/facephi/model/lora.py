"""LoRA adapters of the FacePhi LLM: injected in place for training, merged into a copy for answering."""

from __future__ import annotations

import copy
from typing import Any

import torch

DEFAULT_LORA: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
"""LoRA hyper-parameters of stage 2 with ``lora=True`` (``all-linear`` excludes the LM head)."""


def inject_lora(llm: Any, lora: dict[str, Any] | None) -> None:
    """Insert LoRA layers (``lora``, default ``DEFAULT_LORA``) into ``llm`` in place; it keeps its class."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(task_type="CAUSAL_LM", **(lora or DEFAULT_LORA)), llm)


def has_lora(llm: Any) -> bool:
    return any("lora_" in name for name, _ in llm.named_parameters())


def lora_state_dict(llm: Any) -> dict[str, torch.Tensor]:
    """The LoRA parameters, keyed by their names in the LLM."""
    return {name: param.detach().contiguous() for name, param in llm.named_parameters() if "lora_" in name}


def merged_copy(llm: Any) -> Any:
    """A copy of ``llm`` with each LoRA layer merged into its base weights (``W + scale * B A``) and
    replaced by the base layer: the same function with one matrix product per layer (an LLM
    without LoRA: a plain copy)."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(llm)
    with torch.no_grad():
        for name, module in list(merged.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    return merged.requires_grad_(False).eval()
