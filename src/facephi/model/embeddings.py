"""Growing an LLM's token embeddings for added tokens (``<landmark>``, ``[PAD]``), deterministically."""

from __future__ import annotations

from typing import Any

import torch


def resize_embeddings(llm: Any, vocab_size: int) -> None:
    """Grow the embeddings (and an untied LM head) to ``vocab_size``; new rows = mean of the old rows."""
    old = llm.get_input_embeddings().num_embeddings
    if vocab_size <= old:
        return
    llm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        weights = [llm.get_input_embeddings().weight]
        head = llm.get_output_embeddings()
        if head is not None and head.weight is not weights[0]:
            weights.append(head.weight)
            if getattr(head, "bias", None) is not None:
                head.bias[old:] = head.bias[:old].mean()
        for weight in weights:
            weight[old:] = weight[:old].mean(dim=0)
