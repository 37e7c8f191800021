"""FacePhi: landmark encoder -> projector -> one token embedding inside a causal LM (figure 1).

The projected landmark feature replaces the embedding of the ``<landmark>`` placeholder (one per
sequence); the LLM runs from ``inputs_embeds`` only, so any ``AutoModelForCausalLM`` works. The
training loss is the NLL of the answer tokens and [EOS] (eqs. 2-3, mean over label tokens); by
default the LM head is applied only at those positions (hidden states from ``llm.base_model``,
logits from ``llm.get_output_embeddings()``), which gives the same loss as the full-vocabulary
head at a fraction of its cost. Set ``FacePhiConfig.answer_only_head = False`` for models whose
forward post-processes the logits (e.g. logit soft-capping).

Saved layout (``save_pretrained``)::

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

Class scoring (rank classification, beside free generation): ``class_log_likelihoods`` gives, per
face, the log-probability of each of the 8 class answers (answer text + [EOS], exactly the tokens
``encode_train`` places after the prompt) and ``class_probabilities`` their softmax over the
classes. The prompt runs once per face; its key/value cache is reused for the continuations (see
``class_log_likelihoods``).

Fast path (``FacePhiModel.fast_path``, on by default; ``TrainConfig.fast_path`` in training): the
same losses, gradients and scores with less work. The prefix every prompt shares ([BOS] + system
prompt + "Users:") runs once and the rows continue from its key/value cache; training rows skip
their last token and, on CPU, run in groups of similar length; class scoring runs each face's
prompt, the template words the classes share and the class continuations as one token tree in a
single pass. See ``_split_prefix``, ``_prefix_kv`` and ``_score_tree``.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from facephi.config import Config
from facephi.data.instruction import IGNORE_INDEX, PromptFormatter, prepare_tokenizer
from facephi.data.templates import ANSWER_TEMPLATES, LANDMARK_TOKEN
from facephi.labels import CLASSES, display_name
from facephi.model.checkpoints import FACEPHI, FACEPHI_CONFIG_TYPE, check_model_dir
from facephi.model.llm import DEFAULT_LLM, load_causal_lm, load_language_model
from facephi.model.projector import Projector, ProjectorConfig
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_dir, read_json, write_json

CONFIG_TYPE = FACEPHI_CONFIG_TYPE
"""``config_type`` field of a FacePhi model's ``config.json`` (encoders use their own)."""

SCORE_TEMPLATES = ("first", "all")
"""``templates`` of class scoring: the first answer template, or the mean over all 10."""

PASS_OVERHEAD_TOKENS = 48
"""``length_groups``: the cost of one more LLM pass, in padded tokens (measured on CPU with SmolLM2)."""

SCORE_TOKENS = 8192
"""Tokens (faces x tree) per LLM pass of the fast class scoring (``_score_tree``): bounds its memory."""

SCORE_ROWS = 512
"""Continuation rows (face x template x class) per LLM pass of class scoring: bounds the memory of
the repeated key/value cache (templates are scored in groups that fit)."""

DEFAULT_LORA: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
"""LoRA hyper-parameters of stage 2 with ``lora=True`` (``all-linear`` excludes the LM head)."""


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


def length_groups(lengths: list[int], overhead: int | None = None) -> list[list[int]]:
    """Rows (indices into ``lengths``) in groups of similar length, minimising the padded tokens
    ``sum(rows x longest)`` plus ``overhead`` (default ``PASS_OVERHEAD_TOKENS``) per group (exact,
    over the rows sorted by length)."""
    overhead = PASS_OVERHEAD_TOKENS if overhead is None else overhead
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    best, cut = [0] + [None] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        width = lengths[order[end - 1]]
        for start in range(end):
            cost = best[start] + (end - start) * width + overhead
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def _encoder_config(encoder: nn.Module) -> dict[str, Any]:
    config = getattr(encoder, "config", None)
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return asdict(config) if is_dataclass(config) else {}


class FacePhiModel(nn.Module):
    """Encoder (always frozen) + projector + causal LM, sharing one prepared tokenizer."""

    fast_path: bool = True
    """Same results, less work (``forward`` with labels, class scoring): the shared prefix before
    ``<landmark>`` runs once and every row continues from its key/value cache (see
    ``_split_prefix``), and a last token that predicts nothing is not run. False: every row in full
    (the plain computation, for comparison). Set per model (``TrainConfig.fast_path`` in training)."""

    def __init__(self, config: FacePhiConfig, encoder: nn.Module, llm: Any, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        prepare_tokenizer(tokenizer)
        self._resize_embeddings(llm, len(tokenizer))
        self.landmark_id: int = tokenizer.convert_tokens_to_ids(config.landmark_token)
        config.projector.output_dim = llm.get_input_embeddings().embedding_dim
        config.encoder = config.encoder or _encoder_config(encoder)
        self.encoder = encoder.requires_grad_(False).eval()
        self.projector = Projector(config.projector)
        self.llm = llm
        self.formatter = PromptFormatter(tokenizer, config.max_length, config.projector.tokens)
        self._answer_ids_cache: dict[str, list[int]] = {}
        self._prefix_state: tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    @classmethod
    def from_encoder(cls, encoder: nn.Module, config: FacePhiConfig | None = None) -> "FacePhiModel":
        """A new model around ``encoder`` with the LLM named in ``config`` (untrained projector)."""
        config = config or FacePhiConfig()
        llm, tokenizer = load_language_model(config.llm, config.gguf_file, dtype=config.torch_dtype)
        return cls(config, encoder, llm, tokenizer)

    @staticmethod
    def _resize_embeddings(llm: Any, vocab_size: int) -> None:
        """Grow the embeddings to ``vocab_size``; new rows = mean of the old rows (deterministic)."""
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

    # ------------------------------------------------------------------ training state
    def train(self, mode: bool = True) -> "FacePhiModel":
        """Like ``nn.Module.train`` but the encoder stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def set_trainable(self, stage: int, lora: bool = False, lora_config: dict[str, Any] | None = None,
                      train_encoder: bool = False) -> None:
        """Stage 1: projector only. Stage 2: projector + LLM (full) or + LoRA adapter, and with
        ``train_encoder`` the encoder's weights too (it stays in eval mode: BatchNorm statistics
        and dropout as aligned)."""
        if stage not in (1, 2):
            raise FacePhiError(f"set_trainable: stage must be 1 or 2, got {stage}")
        if train_encoder and stage != 2:
            raise FacePhiError("set_trainable: train_encoder applies to stage 2 only")
        self._prefix_state = None
        self.requires_grad_(False)
        self.projector.requires_grad_(True)
        self.encoder.requires_grad_(train_encoder)
        if stage == 2 and lora:
            if self.config.llm_weights == "full":
                raise FacePhiError("set_trainable: LoRA on top of a fully fine-tuned LLM is not supported")
            if not self.has_lora:
                self.config.lora = {**DEFAULT_LORA, **(lora_config or {})}
                self._inject_lora()
            for name, param in self.llm.named_parameters():
                param.requires_grad_("lora_" in name)
            self.config.llm_weights = "lora"
        elif stage == 2:
            if self.config.llm_weights == "lora":
                raise FacePhiError("set_trainable: this model has a LoRA adapter; continue with lora=True")
            self.llm.requires_grad_(True)
            self.config.llm_weights = "full"

    def set_precision(self, precision: str) -> str:
        """Compute the LLM and projector in ``precision`` (``auto``, ``float32``, ``bfloat16``; see
        :mod:`facephi.model.precision`) on their current device, for answering; the encoder stays
        float32. Returns the precision used. Training and ``save_pretrained`` expect float32."""
        from facephi.model.precision import resolve_precision

        resolved = resolve_precision(precision, self.projector.net[0].weight.device)
        dtype = getattr(torch, resolved)
        self.llm.to(dtype)
        self.projector.to(dtype)
        self._prefix_state = None
        return resolved

    @property
    def has_lora(self) -> bool:
        return any("lora_" in name for name, _ in self.llm.named_parameters())

    def _inject_lora(self) -> None:
        """Insert LoRA layers (``config.lora``) into the LLM in place; the LLM keeps its class."""
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(task_type="CAUSAL_LM", **(self.config.lora or DEFAULT_LORA)), self.llm)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA parameters, keyed by their names in the LLM."""
        return {name: param.detach().contiguous() for name, param in self.llm.named_parameters() if "lora_" in name}

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the projected landmark feature(s) at the ``<landmark>`` positions (the
        K = ``config.projector.tokens`` embeddings of a face in order)."""
        is_landmark = input_ids == self.landmark_id
        counts = is_landmark.sum(dim=1)
        k = self.config.projector.tokens
        if not bool((counts == k).all()):
            raise FacePhiError(f"each sequence needs exactly {'one' if k == 1 else k} {self.config.landmark_token} "
                               f"token{'' if k == 1 else 's'}; got counts {counts.tolist()}")
        if points.shape[0] != input_ids.shape[0]:
            raise FacePhiError(f"batch size mismatch: {points.shape[0]} landmark sets for {input_ids.shape[0]} sequences")
        embeddings = self.llm.get_input_embeddings()(input_ids)
        features = self.encoder(points)
        projected = self.projector(features.to(self.projector.net[0].weight.dtype)).to(embeddings.dtype)
        return embeddings.masked_scatter(is_landmark.unsqueeze(-1), projected)  # row-major: face b's K in order

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions counted from the first real token (correct for left padding)."""
        return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, points: torch.Tensor,
                labels: torch.Tensor | None = None) -> FacePhiOutput:
        """Loss over the label tokens when ``labels`` is given, else the full logits.

        With ``fast_path`` and a batch in the training layout (``_split_prefix``) the loss comes from
        ``_suffix_loss``: the same value and gradients, without running the shared prefix per row.
        """
        if labels is not None and self.fast_path:
            split = self._split_prefix(input_ids, attention_mask, labels)
            if split is not None:
                return FacePhiOutput(loss=self._suffix_loss(*split, points))
        inputs_embeds = self.embed(input_ids, points)
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                  "position_ids": self.position_ids(attention_mask)}
        if labels is None or not self.config.answer_only_head:
            output = self.llm(**kwargs, labels=labels, use_cache=False)
            return FacePhiOutput(loss=output.loss, logits=output.logits)
        hidden = self.llm.base_model(**kwargs, use_cache=False).last_hidden_state
        return FacePhiOutput(loss=self.label_loss(hidden, labels))

    def label_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean NLL of the next-token labels, the LM head applied only where a label is set."""
        return self._next_token_loss(hidden[:, :-1], labels[:, 1:], head=True)

    def _next_token_loss(self, states: torch.Tensor, targets: torch.Tensor, head: bool) -> torch.Tensor:
        """Mean NLL of ``targets`` [B, T] (-100: none) predicted by ``states`` [B, T, *] (hidden
        states, through the LM head when ``head``, or logits)."""
        selected = targets != IGNORE_INDEX
        if not bool(selected.any()):
            raise FacePhiError("label_loss: the batch has no label token (all labels are -100)")
        logits = states[selected]
        if head:
            logits = self.llm.get_output_embeddings()(logits)
        return F.cross_entropy(logits.float(), targets[selected])

    # ------------------------------------------------------------------ shared prefix (fast path)
    def _split_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...] | None:
        """Each row's tokens after the shared prefix ``formatter.shared_prefix`` ([BOS] + system prompt
        + "Users:"), when every row of the batch starts with it.

        In the left-padded layout the prefix sits at a different column in each row but always at the
        positions 0..p-1 (``position_ids``), and a row's tokens only attend to its own real tokens.
        So every row's states equal those of the prefix run once (batch 1) followed by the row's rest
        at positions p, p+1, ... attending to the prefix's key/value cache and to itself: the rows'
        rests are returned left padded to the longest, the pads (between the prefix and the rest)
        masked. Returns ``(ids [B, S], real [B, S] bool, labels [B, S] or None)``, or None when the
        batch does not have that layout: a row cut from the left by ``max_length``, not left padded,
        with at most one token after the prefix, or with a label predicted from inside the prefix.
        """
        prefix = self.formatter.shared_prefix
        p, (rows, width), device = len(prefix), input_ids.shape, input_ids.device
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

    def _prefix_kv(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
            self._prefix_state = None
            return self._run_prefix(device)
        autocast = torch.is_autocast_enabled(device.type)
        key = (str(device), autocast, torch.get_autocast_dtype(device.type) if autocast else None,
               torch.is_inference_mode_enabled(), tuple(self.formatter.shared_prefix),
               tuple(module.training for module in self.llm.modules()),
               tuple((id(param), param.data_ptr(), param._version) for param in params))
        if self._prefix_state is None or self._prefix_state[0] != key:
            with torch.no_grad():
                self._prefix_state = (key, self._run_prefix(device))
        return self._prefix_state[1]

    def _run_prefix(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ids = torch.tensor([self.formatter.shared_prefix], device=device)
        positions = torch.arange(ids.shape[1], device=device)[None]
        _, cache = self._cached_step(self.llm.get_input_embeddings()(ids), torch.ones_like(ids), positions, None)
        layers = getattr(cache, "layers", None)
        if layers is None or any(getattr(layer, "keys", None) is None for layer in layers):
            raise FacePhiError(f"fast path: {type(self.llm).__name__} returned a {type(cache).__name__} without "
                               "per-layer keys and values; set fast_path = False (--no-fast-path)")
        return [(layer.keys, layer.values) for layer in layers]

    def _prefix_cache(self, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> Any:
        """A new cache holding the prefix ``kv`` for each of ``rows`` rows."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:]))
                                            for k, v in kv], config=self.llm.config)

    def _run_after_prefix(self, ids: torch.Tensor, real: torch.Tensor, points: torch.Tensor,
                          kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Run rows ``ids`` [B, S] (``_split_prefix``) after the shared prefix (its key/values ``kv``,
        default ``_prefix_kv``): (states, cache, attention mask of prefix + rows)."""
        p, rows = len(self.formatter.shared_prefix), ids.shape[0]
        kv = self._prefix_kv(ids.device) if kv is None else kv
        mask = torch.cat([real.new_ones(rows, p), real], 1).long()
        positions = p + real.long().cumsum(1) - 1  # a pad's position is never used
        states, cache = self._cached_step(self.embed(ids, points), mask, positions.clamp(min=0),
                                          self._prefix_cache(kv, rows))
        return states, cache, mask

    def _suffix_loss(self, ids: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                     points: torch.Tensor) -> torch.Tensor:
        """``forward``'s loss from ``_split_prefix``'s rows.

        Their last column (each row's last token, [EOS] in training) predicts nothing and is not run.
        On CPU, with a frozen LLM or one whose trainable weights are few (LoRA), the rows run in
        groups of similar length (``length_groups``), each padded to its own longest row; the loss is
        the sum of the groups' token NLLs over the batch's label count, i.e. the batch's mean. In one
        group otherwise: on GPU a pass costs launches more than padding, and with the full LLM
        trainable each extra group adds a sum of gradients as large as the LLM.
        """
        ids, real, targets = ids[:, :-1], real[:, :-1], labels[:, 1:]
        kv = self._prefix_kv(ids.device)
        lengths = real.sum(1).tolist()
        sizes = [(param.numel(), param.requires_grad) for param in self.llm.parameters()]
        few_trainable = 10 * sum(n for n, trainable in sizes if trainable) < sum(n for n, _ in sizes)
        groups = (length_groups(lengths) if ids.device.type == "cpu" and few_trainable
                  else [list(range(len(lengths)))])
        if len(groups) == 1:
            states, _, _ = self._run_after_prefix(ids, real, points, kv)
            return self._next_token_loss(states, targets, head=self.config.answer_only_head)
        if not bool((targets != IGNORE_INDEX).any()):
            raise FacePhiError("label_loss: the batch has no label token (all labels are -100)")
        total, count = 0, 0
        for rows in groups:
            width = max(lengths[r] for r in rows)
            index = torch.tensor(rows, device=ids.device)
            part = targets[index, -width:]
            selected = part != IGNORE_INDEX
            if not bool(selected.any()):
                continue
            states, _, _ = self._run_after_prefix(ids[index, -width:], real[index, -width:], points[index], kv)
            logits = states[selected]
            if self.config.answer_only_head:
                logits = self.llm.get_output_embeddings()(logits)
            total = total + F.cross_entropy(logits.float(), part[selected], reduction="sum")
            count += int(selected.sum())
        return total / count

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, points: torch.Tensor,
                 max_new_tokens: int = 32, **generate_kwargs: Any) -> list[str]:
        """Answers for a left-padded batch of prompts (greedy unless ``generate_kwargs`` say otherwise)."""
        from transformers import GenerationConfig

        tokenizer = self.tokenizer
        suppressed = sorted({self.landmark_id, tokenizer.pad_token_id} - {tokenizer.eos_token_id})
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, suppress_tokens=suppressed)
        config.update(**generate_kwargs)
        was_training = self.training
        self.eval()
        try:
            new_tokens = self.llm.generate(inputs_embeds=self.embed(input_ids, points), attention_mask=attention_mask,
                                           generation_config=config)
        finally:
            self.train(was_training)
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def answer(self, points: torch.Tensor, instructions: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to ``instructions`` (one per landmark set of ``points`` ``[B, 478, 3]``,
        normalised): the one prediction path (prompt layout, left padding, ``generate``) of
        evaluation and ``facephi predict``. Inputs are moved to the model's device."""
        if len(instructions) != len(points):
            raise FacePhiError(f"answer: {len(instructions)} instructions for {len(points)} landmark sets")
        batch = self.formatter.pad_prompts([self.formatter.encode_prompt(text) for text in instructions])
        device = self.projector.net[0].weight.device
        return self.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             torch.as_tensor(points).to(device), max_new_tokens=max_new_tokens)

    # ------------------------------------------------------------------ class scoring
    def class_log_likelihoods(self, points: torch.Tensor, instructions: list[str],
                              templates: str = "first") -> torch.Tensor:
        """Log-likelihood ``[B, 8]`` (classes in ``CLASSES`` order) of each class answer to each prompt.

        The prompt of face ``b`` is ``encode_prompt(instructions[b])`` (left padded in the batch);
        the answer of class ``k`` is ``ANSWER_TEMPLATES[t]`` filled with the class's display name,
        tokenised exactly as ``encode_train`` puts it after the prompt (word separator, answer,
        [EOS]). Its score is the total log-probability of those tokens given the prompt and the
        landmark: ``sum_j log p(a_j | prompt, a_<j)``. The sum (not a per-token mean) is the
        log-probability of the whole sequence, the quantity to compare: the answers of one
        template share every token but the class word(s), so the shared tokens' terms differ only
        through the context the class word gives them, and [EOS] ends every answer alike.

        ``templates="first"`` scores ``ANSWER_TEMPLATES[0]``; ``"all"`` gives
        ``log(mean_t p(answer_t(k)))`` over the 10 templates (logsumexp - log 10).

        Cost: the prompt runs once per face (``use_cache=True``); its key/value cache is repeated
        per template, the template's words shared by the 8 classes run once per (face, template),
        and the cache is repeated 8x for the class-specific rest (right padded and masked, positions
        continuing after each prompt's last real token). Eval mode, ``torch.inference_mode``;
        inputs are moved to the model's device. With the prompt cut from the left by
        ``max_length`` (``encode_prompt``), the prompt scored is that cut prompt. With ``fast_path``
        the same scores come from one pass per group of faces (``_score_tree``).
        """
        if templates not in SCORE_TEMPLATES:
            raise FacePhiError(f"templates must be one of {SCORE_TEMPLATES}, got {templates!r}")
        if len(instructions) != len(points):
            raise FacePhiError(f"class_log_likelihoods: {len(instructions)} instructions for {len(points)} landmark sets")
        chosen = ANSWER_TEMPLATES[:1] if templates == "first" else ANSWER_TEMPLATES
        answers = [[self._answer_ids(t.format(emotion=display_name(name))) for name in CLASSES] for t in chosen]
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            with torch.inference_mode():
                scores = self._score_tree(points, instructions, answers) if self.fast_path else None
                if scores is None:
                    scores = self._score_answers(points, instructions, answers)
        finally:
            for module, training in modes:  # each module's own mode back (an eval-mode LLM stays so)
                module.training = training
        if len(chosen) == 1:
            return scores[:, 0]
        return torch.logsumexp(scores, dim=1) - math.log(len(chosen))

    def class_probabilities(self, points: torch.Tensor, instructions: list[str], templates: str = "first",
                            prior: Any = None) -> torch.Tensor:
        """Softmax over the classes of ``class_log_likelihoods`` -> ``[B, 8]`` (rows sum to 1).

        ``prior`` (8 positive numbers, e.g. the training or validation class frequencies; need not
        sum to 1): logit adjustment, the scores minus ``log(prior)`` before the softmax, i.e. each
        probability divided by its class prior and renormalised (``p_k / pi_k / sum_j p_j / pi_j``).
        """
        scores = self.class_log_likelihoods(points, instructions, templates)
        if prior is not None:
            prior = torch.as_tensor(prior, dtype=scores.dtype).to(scores.device)
            if prior.shape != (len(CLASSES),) or not bool(torch.isfinite(prior).all() and (prior > 0).all()):
                raise FacePhiError(f"prior: need {len(CLASSES)} finite positive numbers, got {prior.tolist()}")
            scores = scores - prior.log()
        return torch.softmax(scores, dim=-1)

    def _answer_ids(self, answer: str) -> list[int]:
        """The tokens ``encode_train`` puts after the prompt for ``answer`` (its label tokens)."""
        if answer not in self._answer_ids_cache:
            labels = self.formatter.encode_train("", answer)["labels"]
            self._answer_ids_cache[answer] = labels[labels != IGNORE_INDEX].tolist()
        return self._answer_ids_cache[answer]

    def _cached_step(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
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
            raise FacePhiError(f"class scoring: {type(self.llm).__name__} returned no transformers Cache "
                               f"(got {type(cache).__name__})")
        return states, cache

    def _token_log_probs(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``log p(target)`` from the states ``[N, *]`` that predict them (hidden states or logits)."""
        if not self.config.answer_only_head:
            return states.float().log_softmax(-1).gather(-1, targets[:, None])[:, 0]
        head = self.llm.get_output_embeddings()
        return torch.cat([head(part).float().log_softmax(-1).gather(-1, goal[:, None])[:, 0]
                          for part, goal in zip(states.split(4096), targets.split(4096))])

    def _continuation(self, last: torch.Tensor, cache: Any, past_mask: torch.Tensor, start: torch.Tensor,
                      sequences: list[list[int]], run_last: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Run right-padded ``sequences`` (one per cache row) after ``cache``.

        ``last`` [R, *]: the state predicting each row's next token; ``past_mask`` [R, S]: the cache's
        attention mask; ``start`` [R]: each row's next position. Returns the summed log-probability
        of each row's tokens [R], the state predicting the token after them [R, *] and the cache.
        ``run_last=False``: each row's last token is scored but not run (nothing after it is needed);
        the state and cache returned are then those after the token before it.
        """
        device, rows = past_mask.device, len(sequences)
        width = max(len(seq) for seq in sequences)
        ids = torch.full((rows, width), self.formatter.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        run_mask = mask if run_last else torch.cat([mask[:, 1:], mask[:, :1] * 0], 1)  # one token fewer per row
        run_width = int(run_mask.sum(1).max())
        run_mask = run_mask[:, :run_width]
        if run_width:
            positions = start[:, None] + torch.arange(run_width, device=device)
            states, cache = self._cached_step(self.llm.get_input_embeddings()(ids[:, :run_width]),
                                              torch.cat([past_mask, run_mask], 1), positions, cache)
        else:
            states = last[:, None][:, :0]
        predicting = torch.cat([last[:, None], states], dim=1)  # column j predicts token j
        real = mask.bool()
        log_probs = torch.zeros(ids.shape, dtype=torch.float32, device=device)
        log_probs[real] = self._token_log_probs(predicting[:, :width][real], ids[real])
        after = predicting[torch.arange(rows, device=device), run_mask.sum(1)]
        return log_probs.sum(1), after, cache

    def _score_tree(self, points: torch.Tensor, instructions: list[str],
                    answers: list[list[list[int]]]) -> torch.Tensor | None:
        """``_score_answers`` in one LLM pass per group of faces (the fast path), or None where it does
        not apply (a prompt cut by ``max_length``, an attention implementation other than sdpa / eager).

        Each face is one row after the shared prefix's cache: its prompt's rest, then per template
        the words its classes share, then per class the class-specific rest without its last token
        (it predicts nothing), a token tree laid out flat. A 4D attention mask lets each token see
        the prefix, its own segment up to itself and its ancestors' segments (rest of the prompt ->
        shared words -> class), with each token at the position it has in its own sequence: every
        state equals the state of that token in the plain sequence [prompt, answer]. The shared
        words' log-probabilities are computed once per (face, template) and added to each class's.
        """
        impl = getattr(self.llm.config, "_attn_implementation", None)
        prefix = self.formatter.shared_prefix
        p = len(prefix)
        prompts = [self.formatter.encode_prompt(text) for text in instructions]
        if impl not in ("sdpa", "eager") or any(len(ids) <= p + 1 or ids[:p] != prefix for ids in prompts):
            return None
        device = self.projector.net[0].weight.device
        n_templates, n_classes = len(answers), len(answers[0])
        shared = []
        for per_class in answers:  # the words the classes of each template share
            n = 0
            while all(len(seq) > n + 1 and seq[n] == per_class[0][n] for seq in per_class):
                n += 1
            shared.append(n)
        # segments: 0 = the prompt's rest; per template t: its shared words, then its classes
        segments, parents = [], [-1]
        for t, per_class in enumerate(answers):
            parents.append(0)
            shared_segment = len(parents) - 1
            segments.append((t, None, shared_segment))
            for k, seq in enumerate(per_class):
                parents.append(shared_segment)
                segments.append((t, k, len(parents) - 1))
        n_segments = len(parents)
        visible = torch.eye(n_segments + 1, dtype=torch.bool)  # [segment of query, segment of key]; last: pads
        for segment in range(1, n_segments):
            ancestor = parents[segment]
            while ancestor >= 0:
                visible[segment, ancestor] = True
                ancestor = parents[ancestor]
        tree_width = sum(shared) + sum(len(seq) - shared[t] - 1 for t, per_class in enumerate(answers)
                                       for seq in per_class)
        rest_width = max(len(ids) for ids in prompts) - p
        faces_per_pass = max(1, SCORE_TOKENS // (rest_width + tree_width))
        points = torch.as_tensor(points).to(device)
        kv = self._prefix_kv(device)
        scores = []
        for first in range(0, len(prompts), faces_per_pass):
            part = prompts[first:first + faces_per_pass]
            rows, width = len(part), rest_width + tree_width
            ids = torch.full((rows, width), self.formatter.pad_id, dtype=torch.long)
            segment_of = torch.full((rows, width), n_segments, dtype=torch.long)
            position = torch.zeros((rows, width), dtype=torch.long)
            shared_terms, class_terms = [], []  # (row, column of the predicting state, target, t[, k])
            for row, prompt in enumerate(part):
                tokens, segs, poss = list(prompt[p:]), [0] * (len(prompt) - p), list(range(p, len(prompt)))
                prompt_last = len(tokens) - 1
                for t, per_class in enumerate(answers):
                    n, shared_segment = shared[t], segments[t * (n_classes + 1)][2]
                    predicting = prompt_last
                    for j in range(n):
                        shared_terms.append((row, predicting, per_class[0][j], t))
                        predicting = len(tokens)
                        tokens.append(per_class[0][j])
                        segs.append(shared_segment)
                        poss.append(len(prompt) + j)
                    shared_last = predicting
                    for k, seq in enumerate(per_class):
                        class_segment = segments[t * (n_classes + 1) + 1 + k][2]
                        predicting = shared_last
                        for j in range(n, len(seq)):
                            class_terms.append((row, predicting, seq[j], t, k))
                            if j < len(seq) - 1:
                                predicting = len(tokens)
                                tokens.append(seq[j])
                                segs.append(class_segment)
                                poss.append(len(prompt) + j)
                ids[row, :len(tokens)] = torch.tensor(tokens)
                segment_of[row, :len(tokens)] = torch.tensor(segs)
                position[row, :len(tokens)] = torch.tensor(poss)
            ids, segment_of, position = ids.to(device), segment_of.to(device), position.to(device)
            allowed = visible.to(device)[segment_of[:, :, None], segment_of[:, None, :]]
            allowed &= torch.ones(width, width, dtype=torch.bool, device=device).tril()
            allowed = torch.cat([allowed.new_ones(rows, width, p), allowed], 2)[:, None]  # [rows, 1, q, p + q]
            embeds = self.embed(ids, points[first:first + rows])
            mask = allowed if impl == "sdpa" else torch.zeros(allowed.shape, dtype=embeds.dtype, device=device
                                                                ).masked_fill(~allowed, torch.finfo(embeds.dtype).min)
            states, _ = self._cached_step(embeds, mask, position, self._prefix_cache(kv, rows))
            total = torch.zeros(rows, n_templates, n_classes, dtype=torch.float32, device=device)
            for terms, per_class in ((shared_terms, False), (class_terms, True)):
                if not terms:
                    continue
                index = torch.tensor(terms, device=device)
                log_probs = self._token_log_probs(states[index[:, 0], index[:, 1]], index[:, 2])
                if per_class:
                    total.index_put_((index[:, 0], index[:, 3], index[:, 4]), log_probs, accumulate=True)
                else:
                    per_template = torch.zeros(rows, n_templates, dtype=torch.float32, device=device)
                    per_template.index_put_((index[:, 0], index[:, 3]), log_probs, accumulate=True)
                    total += per_template[:, :, None]
            scores.append(total)
        return torch.cat(scores)

    def _score_answers(self, points: torch.Tensor, instructions: list[str],
                       answers: list[list[list[int]]]) -> torch.Tensor:
        """Log-likelihoods ``[B, T, K]`` of ``answers[t][k]`` (token ids) after each prompt."""
        device = self.projector.net[0].weight.device
        batch = self.formatter.pad_prompts([self.formatter.encode_prompt(text) for text in instructions])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        points = torch.as_tensor(points).to(device)
        split = self._split_prefix(ids, mask) if self.fast_path else None
        if split is None:
            states, prompt_cache = self._cached_step(self.embed(ids, points), mask, self.position_ids(mask), None)
        else:  # the shared prefix from its cache; ``mask`` now covers prefix + rows
            states, prompt_cache, mask = self._run_after_prefix(split[0], split[1], points)
        prompt_last, prompt_lengths = states[:, -1], mask.sum(1)
        faces, n_classes = len(ids), len(answers[0])
        group = max(1, min(len(answers), SCORE_ROWS // (n_classes * faces)))
        scores = []
        for first in range(0, len(answers), group):
            part = answers[first:first + group]
            last_group = first + group >= len(answers)
            cache = prompt_cache if last_group else copy.deepcopy(prompt_cache)
            # the words the classes share in each template: one row per (face, template), order b * g + t
            shared = []
            for per_class in part:
                n = 0
                while all(len(seq) > n + 1 and seq[n] == per_class[0][n] for seq in per_class):
                    n += 1
                shared.append(n)
            g = len(part)
            cache.batch_repeat_interleave(g)
            past_mask = mask.repeat_interleave(g, 0)
            start = prompt_lengths.repeat_interleave(g)
            last = prompt_last.repeat_interleave(g, 0)
            total = torch.zeros(faces * g, dtype=torch.float32, device=device)
            if max(shared) > 0:
                prefixes = [part[row % g][0][:shared[row % g]] for row in range(faces * g)]
                total, last, cache = self._continuation(last, cache, past_mask, start, prefixes)
                width = max(shared)
                prefix_mask = (torch.arange(width) < torch.tensor(shared)[:, None]).long().to(device)
                past_mask = torch.cat([past_mask, prefix_mask.repeat(faces, 1)], 1)
                start = start + torch.tensor(shared, device=device).repeat(faces)
            # the class-specific rest: one row per (face, template, class), order (b * g + t) * K + k
            cache.batch_repeat_interleave(n_classes)
            rest = [part[(row // n_classes) % g][row % n_classes][shared[(row // n_classes) % g]:]
                    for row in range(faces * g * n_classes)]
            tail, _, _ = self._continuation(last.repeat_interleave(n_classes, 0), cache,
                                            past_mask.repeat_interleave(n_classes, 0),
                                            start.repeat_interleave(n_classes), rest, run_last=not self.fast_path)
            scores.append((total.repeat_interleave(n_classes) + tail).view(faces, g, n_classes))
        return torch.cat(scores, dim=1)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike[str], save_llm: bool | None = None,
                        weights_dtype: str | None = None) -> None:
        """Write the model to ``directory`` atomically (see the module docstring for the layout).

        ``save_llm``: None = save the full LLM weights only when they were fine-tuned; True =
        always (self-contained folder); False = never (reference ``config.llm``; only valid while
        the LLM is unchanged). With LoRA only the adapter is saved and the base is referenced.
        ``weights_dtype`` (e.g. ``"float16"``, ``"bfloat16"``) stores the projector and the LoRA
        adapter in that type (a compact model to ship; loading casts them back to ``config.dtype``).
        """
        store = getattr(torch, weights_dtype) if weights_dtype else None
        if store is not None and not isinstance(store, torch.dtype):
            raise FacePhiError(f"save_pretrained: unknown weights_dtype {weights_dtype!r}")

        def stored(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: (v.to(store) if store is not None else v).contiguous() for k, v in tensors.items()}

        directory = Path(directory)
        if save_llm is None:
            save_llm = self.config.llm_weights == "full"
        if self.config.llm_weights == "full" and not save_llm:
            raise FacePhiError("save_pretrained: the LLM was fine-tuned; its weights must be saved (save_llm=True)")
        if self.config.llm_weights == "lora" and save_llm:
            raise FacePhiError("save_pretrained: with LoRA only the adapter is saved (save_llm must not be True)")
        with atomic_dir(directory) as tmp:
            self.encoder.save_pretrained(tmp / "encoder")
            save_file(stored(self.projector.state_dict()), tmp / "projector.safetensors")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            if self.config.llm_weights == "lora":
                (tmp / "adapter").mkdir()
                save_file(stored(self.lora_state_dict()), tmp / "adapter" / "adapter.safetensors")
            elif save_llm:
                self.llm.save_pretrained(tmp / "llm")
            write_json(tmp / "config.json", self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str],
                        encoder_loader: Callable[[Path], nn.Module] | None = None) -> "FacePhiModel":
        """Load a saved model. ``encoder_loader(path)`` defaults to ``LandmarkEncoder.from_pretrained``."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        check_model_dir(directory, flag=None, expect=FACEPHI)  # every file, before the LLM is loaded
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
        model = cls(config, encoder, llm, tokenizer)
        model.projector.load_state_dict(load_file(directory / "projector.safetensors"))
        if config.llm_weights == "lora":
            if not (directory / "adapter").is_dir():
                raise FacePhiError(f"{directory}: config says llm_weights='lora' but adapter/ is missing")
            model._inject_lora()
            weights = load_file(directory / "adapter" / "adapter.safetensors")
            if set(weights) != set(model.lora_state_dict()):
                raise FacePhiError(f"{directory / 'adapter'}: the adapter does not match config.lora and the LLM")
            model.llm.load_state_dict(weights, strict=False)
        model.requires_grad_(False)
        return model.eval()
