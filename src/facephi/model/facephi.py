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

Class scoring (rank classification, beside free generation): ``ClassScoringMixin``
(``facephi.model.class_scoring``).

Fast path (``FacePhiModel.fast_path``, on by default; ``TrainConfig.fast_path`` in training): the
same losses, gradients and scores with less work. The prefix every prompt shares ([BOS] + system
prompt + "Users:") runs once and the rows continue from its key/value cache; training rows skip
their last token and, on CPU, run in groups of similar length; class scoring runs each face's
prompt, the template words the classes share and the class continuations as one token tree in a
single pass. See ``_split_prefix``, ``_prefix_kv`` and ``_score_tree``.
"""

from __future__ import annotations

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
from facephi.data.templates import LANDMARK_TOKEN
from facephi.model.class_scoring import ClassScoringMixin
from facephi.model.checkpoints import FACEPHI, FACEPHI_CONFIG_TYPE, check_model_dir
from facephi.model.llm import DEFAULT_LLM, load_causal_lm, load_language_model
from facephi.model.projector import Projector, ProjectorConfig
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_dir, read_json, write_json

CONFIG_TYPE = FACEPHI_CONFIG_TYPE
"""``config_type`` field of a FacePhi model's ``config.json`` (encoders use their own)."""

PASS_OVERHEAD_TOKENS = 48
"""``length_groups``: the cost of one more LLM pass, in padded tokens (measured on CPU with SmolLM2)."""

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


def weighted_mean(total: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """``total / weight``; 0 (keeping ``total``'s graph) where every weight is 0, e.g. a batch whose
    answers all name classes the class weights gave 0."""
    return total / weight if float(weight) > 0 else total * 0.0


def require_label_tokens(targets: torch.Tensor) -> None:
    """FacePhiError unless ``targets`` holds at least one label token (not -100)."""
    if not bool((targets != IGNORE_INDEX).any()):
        raise FacePhiError("label_loss: the batch has no label token (all labels are -100)")


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


class FacePhiModel(ClassScoringMixin, nn.Module):
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
                labels: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> FacePhiOutput:
        """Loss over the label tokens when ``labels`` is given, else the full logits.

        ``weights`` [B] (optional, with ``labels``): each row's label tokens count with its weight,
        the loss is ``sum(w_b * nll_bt) / sum(w_b * 1)`` over the label tokens (equal weights: the
        plain mean); training uses it for class weights (``TrainConfig.class_weights``).

        With ``fast_path`` and a batch in the training layout (``_split_prefix``) the loss comes from
        ``_suffix_loss``: the same value and gradients, without running the shared prefix per row.
        """
        if weights is not None and (labels is None or weights.shape != labels.shape[:1]):
            raise FacePhiError(f"forward: weights need labels and one weight per row, got "
                               f"{list(weights.shape)} for {None if labels is None else list(labels.shape)}")
        if labels is not None and self.fast_path:
            split = self._split_prefix(input_ids, attention_mask, labels)
            if split is not None:
                return FacePhiOutput(loss=self._suffix_loss(*split, points, weights))
        inputs_embeds = self.embed(input_ids, points)
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                  "position_ids": self.position_ids(attention_mask)}
        if labels is None or (not self.config.answer_only_head and weights is None):
            output = self.llm(**kwargs, labels=labels, use_cache=False)
            return FacePhiOutput(loss=output.loss, logits=output.logits)
        if not self.config.answer_only_head:
            logits = self.llm(**kwargs, use_cache=False).logits
            return FacePhiOutput(loss=self._next_token_loss(logits[:, :-1], labels[:, 1:], False, weights),
                                 logits=logits)
        hidden = self.llm.base_model(**kwargs, use_cache=False).last_hidden_state
        return FacePhiOutput(loss=self.label_loss(hidden, labels, weights))

    def label_loss(self, hidden: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL of the next-token labels (row-weighted by ``weights``, see ``forward``), the LM
        head applied only where a label is set."""
        return self._next_token_loss(hidden[:, :-1], labels[:, 1:], True, weights)

    def _next_token_loss(self, states: torch.Tensor, targets: torch.Tensor, head: bool,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL of ``targets`` [B, T] (-100: none) predicted by ``states`` [B, T, *] (hidden
        states, through the LM head when ``head``, or logits); row-weighted by ``weights`` [B]."""
        require_label_tokens(targets)
        return weighted_mean(*self._token_nll_sum(states, targets, head, weights))

    def _token_nll_sum(self, states: torch.Tensor, targets: torch.Tensor, head: bool,
                       weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(sum of the label tokens' NLL, each times its row's weight; sum of those weights): the
        weighted mean's numerator and denominator (0 with no label token)."""
        selected = targets != IGNORE_INDEX
        if not bool(selected.any()):
            return states.new_zeros(()), 0.0
        logits = states[selected]
        if head:
            logits = self.llm.get_output_embeddings()(logits)
        nll = F.cross_entropy(logits.float(), targets[selected], reduction="none")
        if weights is None:
            return nll.sum(), float(nll.numel())
        token_weights = weights.to(nll.device, torch.float32)[:, None].expand(targets.shape)[selected]
        return (nll * token_weights).sum(), token_weights.sum()

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
                     points: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``forward``'s loss from ``_split_prefix``'s rows (row-weighted by ``weights``).

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
        require_label_tokens(targets)
        if len(groups) == 1:
            states, _, _ = self._run_after_prefix(ids, real, points, kv)
            return weighted_mean(*self._token_nll_sum(states, targets, self.config.answer_only_head, weights))
        total, count = 0, 0
        for rows in groups:
            width = max(lengths[r] for r in rows)
            index = torch.tensor(rows, device=ids.device)
            part = targets[index, -width:]
            if not bool((part != IGNORE_INDEX).any()):
                continue
            states, _, _ = self._run_after_prefix(ids[index, -width:], real[index, -width:], points[index], kv)
            group_total, group_count = self._token_nll_sum(states, part, self.config.answer_only_head,
                                                           None if weights is None else weights[index])
            total, count = total + group_total, count + group_count
        return weighted_mean(total, count)

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
