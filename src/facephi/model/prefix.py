"""The shared prompt prefix: run once, its key/value cache reused by every row.

Every FacePhi prompt starts with the same tokens, ``PromptFormatter.shared_prefix`` ([BOS] +
system prompt + "Users:"), at positions 0..p-1. :class:`SharedPrefix` runs them once through its
LLM, holds their key/value states, expands them into a cache for a batch of rows, and runs rows
(or token trees, see :meth:`SharedPrefix.run_tree`) after them. Its LLM passes (:meth:`step`) are
the one place where the FacePhi model calls its LLM with a cache.
"""

from __future__ import annotations

from typing import Any

import torch

from facephi.data.instruction import IGNORE_INDEX
from facephi.utils.errors import FacePhiError

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, the keys and values ``[rows, heads, tokens, dim]``."""


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real token (correct for left padding)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def weights_key(params: list[torch.Tensor]) -> tuple:
    """What identifies the current values of ``params``: identity, storage, dtype, device and in-place
    version of each (an inference tensor, which has no version, counts as unchanged)."""
    return tuple((id(param), param.data_ptr(), param.dtype, param.device,
                  0 if param.is_inference() else param._version) for param in params)


class SharedPrefix:
    """The shared prefix of ``formatter`` run through ``llm``; ``config.answer_only_head`` (read at
    each call) says whether passes return hidden states (the LM head applied where needed) or logits."""

    def __init__(self, llm: Any, formatter: Any, config: Any) -> None:
        self.llm, self.formatter, self.config = llm, formatter, config
        self.state: tuple[Any, KeyValues] | None = None
        """(key, key/values) of the frozen LLM's prefix, reused while the key holds (see ``kv``)."""

    @property
    def ids(self) -> list[int]:
        return self.formatter.shared_prefix

    def clear(self) -> None:
        self.state = None

    # ------------------------------------------------------------------ LLM passes
    def step(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
             cache: Any) -> tuple[torch.Tensor, Any]:
        """One LLM pass continuing ``cache`` (None: a new one): (hidden states or logits, cache)."""
        kwargs = {"inputs_embeds": embeds, "attention_mask": attention_mask, "position_ids": position_ids,
                  "cache": cache, "use_cache": True}  # transformers 5.x name of past_key_values
        if self.config.answer_only_head:
            output = self.llm.base_model(**kwargs)
            states = output.last_hidden_state
        else:
            output = self.llm(**kwargs)
            states = output.logits
        cache = output.cache
        if not hasattr(cache, "batch_repeat_interleave"):
            raise FacePhiError(f"{type(self.llm).__name__} returned no transformers Cache (got {type(cache).__name__})")
        return states, cache

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """float32 logits from states of ``step`` (the LM head where they are hidden states)."""
        if not self.config.answer_only_head:
            return states.float()
        return self.llm.get_output_embeddings()(states).float()

    def token_log_probs(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``log p(target)`` from the states ``[N, *]`` that predict them."""
        if not len(states):
            return states.new_zeros(0, dtype=torch.float32)
        return torch.cat([self.logits(part).log_softmax(-1).gather(-1, goal[:, None])[:, 0]
                          for part, goal in zip(states.split(4096), targets.split(4096))])

    # ------------------------------------------------------------------ the prefix's cache
    def split(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...] | None:
        """Each row's tokens after the shared prefix, when every row of the batch starts with it.

        In the left-padded layout the prefix sits at a different column in each row but always at the
        positions 0..p-1 (``position_ids``), and a row's tokens only attend to its own real tokens.
        So every row's states equal those of the prefix run once (batch 1) followed by the row's rest
        at positions p, p+1, ... attending to the prefix's key/value cache and to itself: the rows'
        rests are returned left padded to the longest, the pads (between the prefix and the rest)
        masked. Returns ``(ids [B, S], real [B, S] bool, labels [B, S] or None)``, or None when the
        batch does not have that layout: a row cut from the left by ``max_length``, not left padded,
        with at most one token after the prefix, or with a label predicted from inside the prefix.
        """
        prefix = self.ids
        p, width, device = len(prefix), input_ids.shape[1], input_ids.device
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        starts = width - lengths
        columns = torch.arange(width, device=device)
        if width <= p + 1 or bool((lengths <= p + 1).any()) or not torch.equal(mask, columns >= starts[:, None]):
            return None
        at = starts[:, None] + torch.arange(p, device=device)
        if not bool((input_ids.gather(1, at) == torch.tensor(prefix, device=device)).all()):
            return None
        after = starts + p  # each row's first column after the prefix (its <landmark>)
        if labels is not None and bool(((labels != IGNORE_INDEX) & (columns <= after[:, None])).any()):
            return None
        rest = int(lengths.max()) - p
        real = columns[width - rest:] >= after[:, None]
        ids = input_ids[:, width - rest:].masked_fill(~real, self.formatter.pad_id)
        if labels is not None:
            labels = labels[:, width - rest:].masked_fill(~real, IGNORE_INDEX)
        return ids, real, labels

    def starts(self, prompt: list[int]) -> bool:
        """Whether ``prompt`` (ids) continues the shared prefix by more than one token."""
        return len(prompt) > len(self.ids) + 1 and prompt[:len(self.ids)] == self.ids

    def kv(self, device: torch.device) -> KeyValues:
        """Key/value states ``[1, heads, p, dim]`` per layer of the shared prefix.

        While the LLM has trainable parameters (stage 2, its training steps and its valid loss) they
        are computed in each call, once per batch, and broadcast to its rows (their gradients add up
        as the rows' would). With a frozen LLM (stage 1, a loaded model's evaluation and scoring)
        they are computed once without autograd and reused while the LLM stays frozen and its
        weights (identity, storage, in-place version), modules' modes, device, autocast and
        inference mode stay the same: in stage 1, once per run. (An optimizer cannot change frozen
        weights; a fused one changes trainable weights without bumping their versions, hence no
        reuse while any is trainable.) The prefix comes before ``<landmark>``, so it has no gradient
        path to the projector. With dropout active in the LLM (LoRA's ``lora_dropout``, GPT-2's own)
        the rows of a batch share the prefix's dropout draw: each row's loss has the distribution
        it has in the plain computation, the rows' draws are no longer independent.
        """
        params = list(self.llm.parameters())
        if any(param.requires_grad for param in params):
            self.state = None
            return self.run(device)
        autocast = torch.is_autocast_enabled(device.type)
        key = (str(device), autocast, torch.get_autocast_dtype(device.type) if autocast else None,
               torch.is_inference_mode_enabled(), tuple(self.ids), self.config.answer_only_head,
               tuple(module.training for module in self.llm.modules()),
               weights_key(params))
        if self.state is None or self.state[0] != key:
            with torch.no_grad():
                self.state = (key, self.run(device))
        return self.state[1]

    def run(self, device: torch.device) -> KeyValues:
        """The prefix through the LLM now (batch 1): its key/value states per layer."""
        ids = torch.tensor([self.ids], device=device)
        positions = torch.arange(ids.shape[1], device=device)[None]
        _, cache = self.step(self.llm.get_input_embeddings()(ids), torch.ones_like(ids), positions, None)
        layers = getattr(cache, "layers", None)
        if layers is None or any(getattr(layer, "keys", None) is None for layer in layers):
            raise FacePhiError(f"fast path: {type(self.llm).__name__} returned a {type(cache).__name__} without "
                               "per-layer keys and values; set fast_path = False (--no-fast-path)")
        return [(layer.keys, layer.values) for layer in layers]

    def expand(self, kv: KeyValues, rows: int) -> Any:
        """A new cache holding the prefix ``kv`` for each of ``rows`` rows."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:]))
                                            for k, v in kv], config=self.llm.config)

    def run_rows(self, embeds: torch.Tensor, real: torch.Tensor,
                 kv: KeyValues | None = None) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Rows ``embeds`` [B, S] (left padded, ``real`` marks their tokens; see ``split``) after the
        prefix (its key/values ``kv``, default ``kv()``): (states, cache, mask of prefix + rows)."""
        p, rows = len(self.ids), embeds.shape[0]
        kv = self.kv(embeds.device) if kv is None else kv
        mask = torch.cat([real.new_ones(rows, p), real], 1).long()
        positions = p + real.long().cumsum(1) - 1  # a pad's position is never used
        states, cache = self.step(embeds, mask, positions.clamp(min=0), self.expand(kv, rows))
        return states, cache, mask

    def tree_attention_supported(self) -> bool:
        """Whether the LLM takes the 4D attention masks of ``run_tree`` (sdpa or eager attention)."""
        return getattr(self.llm.config, "_attn_implementation", None) in ("sdpa", "eager")

    def run_tree(self, embeds: torch.Tensor, positions: torch.Tensor, sees: torch.Tensor,
                 past_visible: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Run new tokens ``embeds`` [B, W] after ``cache`` with an explicit attention pattern.

        ``sees`` [B, W, W] bool: which new tokens each new token attends to (itself included);
        ``past_visible`` [B, P] bool: which of the cache's P columns every new token attends to;
        ``positions`` [B, W]: each token's position. The 4D mask lets token trees (several
        continuations side by side) run in one pass with each token's state equal to the one it
        has in its own sequence. Needs ``tree_attention_supported()``.
        """
        rows, width = sees.shape[:2]
        allowed = torch.cat([past_visible[:, None, :].expand(rows, width, -1), sees], 2)[:, None]
        if self.llm.config._attn_implementation == "sdpa":
            mask = allowed
        else:
            mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device
                               ).masked_fill(~allowed, torch.finfo(embeds.dtype).min)
        return self.step(embeds, mask, positions, cache)
