"""FacePhi: landmark encoder -> projector -> one token embedding inside a causal LM (figure 1).

The projected landmark feature replaces the embedding of the ``<landmark>`` placeholder; the LLM
runs from ``inputs_embeds`` only, so any ``AutoModelForCausalLM`` works. The training loss is the
NLL of the answer tokens and [EOS] (eqs. 2-3), the LM head applied only at those positions (set
``FacePhiConfig.answer_only_head = False`` for models whose forward post-processes the logits).
Saved layout: ``model/saving.py``.

The model holds its parts: ``prefix`` (``model/prefix.py``: the prompt prefix every row shares,
run once, its key/value cache reused), ``scorer`` (``model/class_scoring.py``: likelihoods of the
8 class answers) and ``decoder()`` (``model/decoding.py``: greedy answers in few LLM passes,
drafted from the trained answers). ``fast_path`` (default True; ``TrainConfig.fast_path``): the
same losses, gradients, scores and answers with less work; a LoRA adapter is merged into a copy
of the LLM for answering (training keeps the adapter).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from facephi.data.instruction import IGNORE_INDEX, PromptFormatter, prepare_tokenizer
from facephi.model.answer_prior import AnswerPrior, ClassWordBias
from facephi.model.class_scoring import ClassScorer, class_probabilities, reduce_templates
from facephi.model.decoding import AnswerTrie, TemplateDecoder, plain_greedy
from facephi.model.embeddings import resize_embeddings
from facephi.model.facephi_config import CONFIG_TYPE, FacePhiConfig, FacePhiOutput, encoder_config
from facephi.model.llm import load_language_model
from facephi.model.lm_loss import (PASS_OVERHEAD_TOKENS, length_groups, require_label_tokens, token_nll_sum,
                                   weighted_mean)
from facephi.model.lora import DEFAULT_LORA, has_lora, inject_lora, lora_state_dict, merged_copy
from facephi.model.prefix import SharedPrefix, position_ids, weights_key
from facephi.model.projector import Projector
from facephi.model.quantize import quantize_int8
from facephi.model.saving import load_parts, save_model
from facephi.utils.errors import FacePhiError

__all__ = ["CONFIG_TYPE", "FacePhiConfig", "FacePhiModel", "FacePhiOutput", "length_groups"]

class FacePhiModel(nn.Module):
    """Encoder (always frozen) + projector + causal LM, sharing one prepared tokenizer."""

    fast_path: bool = True
    """Same results, less work (loss, class scoring, answers; see the module docstring). False: the
    plain computations, for comparison. Set per model (``TrainConfig.fast_path`` in training)."""

    def __init__(self, config: FacePhiConfig, encoder: nn.Module, llm: Any, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        prepare_tokenizer(tokenizer)
        resize_embeddings(llm, len(tokenizer))
        self.landmark_id: int = tokenizer.convert_tokens_to_ids(config.landmark_token)
        config.projector.output_dim = llm.get_input_embeddings().embedding_dim
        config.encoder = config.encoder or encoder_config(encoder)
        self.encoder = encoder.requires_grad_(False).eval()
        self.projector = Projector(config.projector)
        self.llm = llm
        self.formatter = PromptFormatter(tokenizer, config.max_length, config.projector.tokens)
        self.prefix = SharedPrefix(llm, self.formatter, config)
        self.scorer = ClassScorer(self.formatter, self.embed)
        self.answer_prior = AnswerPrior(config, self.scorer, self.encoder)
        """The training prior divided out of answers and probabilities, the encoder's class probabilities
        multiplied in (``model/answer_prior.py``)."""
        self.int8 = False
        """Answer through an int8 copy of the LLM (``set_precision("int8")``)."""
        self._answering_copy: tuple[Any, SharedPrefix] | None = None  # (key, prefix of answering_prefix's copy)
        self._decoder: TemplateDecoder | None = None

    @classmethod
    def from_encoder(cls, encoder: nn.Module, config: FacePhiConfig | None = None) -> "FacePhiModel":
        """A new model around ``encoder`` with the LLM named in ``config`` (untrained projector)."""
        config = config or FacePhiConfig()
        llm, tokenizer = load_language_model(config.llm, config.gguf_file, dtype=config.torch_dtype)
        return cls(config, encoder, llm, tokenizer)

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
        self.prefix.clear()
        self._answering_copy = None
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
        """Answer in ``precision`` (``auto``, ``float32``, ``bfloat16``, ``int8``; see
        :mod:`facephi.model.precision`) on the current device: the LLM and projector in that type,
        or for ``int8`` (CPU) a copy of the LLM with int8 linear layers that answers and scores on
        the fast path. The encoder stays float32. Returns the precision used. Training and
        ``save_pretrained`` expect float32."""
        from facephi.model.precision import resolve_precision

        resolved = resolve_precision(precision, self.projector.net[0].weight.device)
        dtype = torch.float32 if resolved == "int8" else getattr(torch, resolved)
        self.llm.to(dtype)
        self.projector.to(dtype)
        self.int8 = resolved == "int8"
        self.prefix.clear()
        self._answering_copy = None
        return resolved

    @property
    def has_lora(self) -> bool:
        return has_lora(self.llm)

    def _inject_lora(self) -> None:
        inject_lora(self.llm, self.config.lora)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA parameters, keyed by their names in the LLM."""
        return lora_state_dict(self.llm)

    def answering_prefix(self) -> SharedPrefix:
        """The shared prefix (and through it the LLM) that answers and scores. With ``fast_path``, a
        frozen LLM and a LoRA adapter or ``int8``: that of a copy, the adapter merged and the linear
        layers int8 (made on first use, again when the LLM's weights, dtype or device change);
        otherwise ``prefix`` (the LLM itself)."""
        params = list(self.llm.parameters())
        if not (self.fast_path and (self.int8 or self.has_lora)) or any(param.requires_grad for param in params):
            return self.prefix
        key = (self.int8, weights_key(params))
        if self._answering_copy is None or self._answering_copy[0] != key:
            self._answering_copy = None  # the old copy's memory first
            with torch.inference_mode(False):  # ordinary tensors, even when asked inside inference mode
                llm = merged_copy(self.llm)
                llm = quantize_int8(llm) if self.int8 else llm
            self._answering_copy = (key, SharedPrefix(llm, self.formatter, self.config))
        return self._answering_copy[1]

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

    position_ids = staticmethod(position_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, points: torch.Tensor,
                labels: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> FacePhiOutput:
        """Loss over the label tokens when ``labels`` is given, else the full logits.

        ``weights`` [B] (optional, with ``labels``): each row's label tokens count with its weight,
        the loss is ``sum(w_b * nll_bt) / sum(w_b * 1)`` over the label tokens (equal weights: the
        plain mean); training uses it for class weights (``TrainConfig.class_weights``).

        With ``fast_path`` and a batch in the training layout (``SharedPrefix.split``) the loss comes from
        ``_suffix_loss``: the same value and gradients, without running the shared prefix per row.
        """
        if weights is not None and (labels is None or weights.shape != labels.shape[:1]):
            raise FacePhiError(f"forward: weights need labels and one weight per row, got "
                               f"{list(weights.shape)} for {None if labels is None else list(labels.shape)}")
        if labels is not None and self.fast_path:
            split = self.prefix.split(input_ids, attention_mask, labels)
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
        return weighted_mean(*token_nll_sum(states, targets, self._head(head), weights))

    def _head(self, apply: bool) -> nn.Module | None:
        """The LM head where states are hidden states (``apply``), else None (they are logits)."""
        return self.llm.get_output_embeddings() if apply else None

    # ------------------------------------------------------------------ shared prefix (fast path)
    def _run_after_prefix(self, ids: torch.Tensor, real: torch.Tensor, points: torch.Tensor,
                          kv: Any = None) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Rows ``ids`` [B, S] of ``SharedPrefix.split`` after the prefix: (states, cache, mask)."""
        return self.prefix.run_rows(self.embed(ids, points), real, kv)

    def _suffix_loss(self, ids: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                     points: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``forward``'s loss from ``SharedPrefix.split``'s rows (row-weighted by ``weights``).

        Their last column (each row's last token, [EOS] in training) predicts nothing and is not run.
        On CPU, with a frozen LLM or one whose trainable weights are few (LoRA), the rows run in
        groups of similar length (``length_groups``), each padded to its own longest row; the loss is
        the sum of the groups' token NLLs over the batch's label count, i.e. the batch's mean. In one
        group otherwise: on GPU a pass costs launches more than padding, and with the full LLM
        trainable each extra group adds a sum of gradients as large as the LLM.
        """
        ids, real, targets = ids[:, :-1], real[:, :-1], labels[:, 1:]
        kv = self.prefix.kv(ids.device)
        lengths = real.sum(1).tolist()
        sizes = [(param.numel(), param.requires_grad) for param in self.llm.parameters()]
        few_trainable = 10 * sum(n for n, trainable in sizes if trainable) < sum(n for n, _ in sizes)
        groups = (length_groups(lengths, PASS_OVERHEAD_TOKENS) if ids.device.type == "cpu" and few_trainable
                  else [list(range(len(lengths)))])
        require_label_tokens(targets)
        if len(groups) == 1:
            states, _, _ = self._run_after_prefix(ids, real, points, kv)
            return weighted_mean(*token_nll_sum(states, targets, self._head(self.config.answer_only_head), weights))
        total, count = 0, 0
        for rows in groups:
            width = max(lengths[r] for r in rows)
            index = torch.tensor(rows, device=ids.device)
            part = targets[index, -width:]
            if not bool((part != IGNORE_INDEX).any()):
                continue
            states, _, _ = self._run_after_prefix(ids[index, -width:], real[index, -width:], points[index], kv)
            group_total, group_count = token_nll_sum(states, part, self._head(self.config.answer_only_head),
                                                           None if weights is None else weights[index])
            total, count = total + group_total, count + group_count
        return weighted_mean(total, count)

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Eval and inference mode for answering and scoring, then each module's own mode back."""
        training = [module for module in self.modules() if module.training]
        for module in training:
            module.training = False
        try:
            with torch.inference_mode():
                yield
        finally:
            for module in training:
                module.training = True

    def suppressed_tokens(self) -> list[int]:
        """Tokens never generated: the landmark placeholder and the pad token (unless it is [EOS])."""
        tokenizer = self.tokenizer
        return sorted({self.landmark_id, tokenizer.pad_token_id} - {tokenizer.eos_token_id})

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, points: torch.Tensor,
                 max_new_tokens: int = 32, encoder_log_probs: torch.Tensor | None = None,
                 **generate_kwargs: Any) -> list[str]:
        """Answers for a left-padded batch of prompts by ``transformers``' ``generate`` (greedy unless
        ``generate_kwargs`` say otherwise; the answer prior's class-word bias, from ``encoder_log_probs``
        when given, else computed): the plain reference of ``answer``."""
        from transformers import GenerationConfig, LogitsProcessorList

        tokenizer = self.tokenizer
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, suppress_tokens=self.suppressed_tokens())
        config.update(**generate_kwargs)
        with self._answering():
            log_q = self.answer_prior.encoder_log_probs(points) if encoder_log_probs is None else encoder_log_probs
            bias = self.answer_prior.token_bias(log_q, len(points), points.device)
            processors = LogitsProcessorList([] if bias is None else [ClassWordBias(bias)])
            new_tokens = self.llm.generate(inputs_embeds=self.embed(input_ids, points), attention_mask=attention_mask,
                                           generation_config=config, logits_processor=processors)
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def answer(self, points: torch.Tensor, instructions: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to ``instructions`` (one per landmark set of ``points`` ``[B, 478, 3]``,
        normalised): the one prediction path of evaluation and ``facephi predict``. With
        ``fast_path``, template-drafted decoding (``model/decoding.py``), otherwise (or where it does
        not apply) ``generate``; the same answers. Inputs are moved to the model's device."""
        return self._answer(points, instructions, max_new_tokens, None)[0]

    def answer_and_probabilities(self, points: torch.Tensor, instructions: list[str], max_new_tokens: int = 32,
                                 templates: str = "first", prior: Any = None) -> tuple[list[str], torch.Tensor]:
        """``answer`` and ``class_probabilities`` together; with ``fast_path`` the scoring pass is also
        answering's first pass."""
        answers = self.scorer.answers(templates)
        texts, scores, log_q = self._answer(points, instructions, max_new_tokens, answers)
        return texts, self._probabilities(reduce_templates(scores), log_q, prior)

    def _answer(self, points: Any, instructions: list[str], max_new_tokens: int, answers: list[list[list[int]]] | None
                ) -> tuple[list[str], torch.Tensor | None, torch.Tensor | None]:
        """Answers, with ``answers`` their class scores, and the faces' ``encoder_log_probs``."""
        if len(instructions) != len(points):
            raise FacePhiError(f"answer: {len(instructions)} instructions for {len(points)} landmark sets")
        prompts = [self.formatter.encode_prompt(text) for text in instructions]
        device = self.projector.net[0].weight.device
        points = torch.as_tensor(points).to(device)
        log_q = self.answer_prior.encoder_log_probs(points)
        prefix = self.answering_prefix()
        if (self.fast_path and max_new_tokens >= 1 and prefix.tree_attention_supported() and plain_greedy(self.llm)
                and all(prefix.starts(ids) for ids in prompts)):
            with self._answering():
                tokens, scores = self.decoder().decode(prefix, points, prompts, max_new_tokens, answers,
                                                       self.answer_prior.token_bias(log_q, len(points), device))
            texts = [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
            return texts, scores, log_q
        batch = self.formatter.pad_prompts(prompts)
        texts = self.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device), points,
                              max_new_tokens=max_new_tokens, encoder_log_probs=log_q)
        if answers is None:
            return texts, None, log_q
        with self._answering():
            scores = self.scorer.plain_scores(self.prefix, points, instructions, answers, self.fast_path)
        return texts, scores, log_q

    def decoder(self) -> TemplateDecoder:
        """The template-drafted greedy decoder (its trie: the 80 trained answers)."""
        if self._decoder is None:
            trie = AnswerTrie([(seq[:-1], k) for per_class in self.scorer.answers("all")
                               for k, seq in enumerate(per_class)], len(self.scorer.answers()[0]))
            self._decoder = TemplateDecoder(self.scorer, trie, self.tokenizer.eos_token_id, self.suppressed_tokens())
        return self._decoder

    # ------------------------------------------------------------------ class scoring
    def class_log_likelihoods(self, points: torch.Tensor, instructions: list[str],
                              templates: str = "first") -> torch.Tensor:
        """Log-likelihood ``[B, 8]`` (classes in ``CLASSES`` order) of each class answer to each prompt:
        the summed log-probability of the class's answer tokens (``ANSWER_TEMPLATES[t]`` with its
        display name, tokenised as ``encode_train`` puts it after the prompt, [EOS] last) given
        ``encode_prompt(instructions[b])`` and the landmarks. ``templates="first"``: template 0;
        ``"all"``: ``log(mean_t p(answer_t(k)))`` over the 10 templates. With ``fast_path`` one
        token-tree pass per group of faces (``ClassScorer.tree_scores``), else the plain reference
        (``ClassScorer.plain_scores``). Eval and inference mode; inputs moved to the model's device."""
        if len(instructions) != len(points):
            raise FacePhiError(f"class_log_likelihoods: {len(instructions)} instructions for {len(points)} landmark sets")
        points = torch.as_tensor(points).to(self.projector.net[0].weight.device)
        prefix = self.answering_prefix()
        with self._answering():
            return self.scorer.log_likelihoods(prefix, points, instructions, templates, self.fast_path)

    def class_probabilities(self, points: torch.Tensor, instructions: list[str], templates: str = "first",
                            prior: Any = None) -> torch.Tensor:
        """Softmax over the classes of ``class_log_likelihoods`` -> ``[B, 8]`` (rows sum to 1).

        ``prior`` (8 positive numbers, e.g. class frequencies; need not sum to 1): logit adjustment,
        the scores minus ``log(prior)`` before the softmax (``p_k / pi_k / sum_j p_j / pi_j``); None:
        the model's answer prior (``answer_prior``: none when its τ is 0). The encoder's class
        probabilities (``encoder_weight``) are multiplied in either way.
        """
        scores = self.class_log_likelihoods(points, instructions, templates)
        log_q = self.answer_prior.encoder_log_probs(torch.as_tensor(points).to(self.projector.net[0].weight.device))
        return self._probabilities(scores, log_q, prior)

    def _probabilities(self, scores: torch.Tensor, log_q: torch.Tensor | None, prior: Any) -> torch.Tensor:
        return class_probabilities(self.answer_prior.adjust(scores, log_q, own_prior=prior is None), prior)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike[str], save_llm: bool | None = None,
                        weights_dtype: str | None = None) -> None:
        """Write the model to ``directory`` atomically (layout: ``model/saving.py``).

        ``save_llm``: None = save the full LLM weights only when they were fine-tuned; True =
        always (self-contained folder); False = never (reference ``config.llm``; only valid while
        the LLM is unchanged). With LoRA only the adapter is saved and the base is referenced.
        ``weights_dtype`` (e.g. ``"float16"``, ``"bfloat16"``) stores the projector and the LoRA
        adapter in that type (a compact model to ship; loading casts them back to ``config.dtype``).
        """
        save_model(self, directory, save_llm, weights_dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str],
                        encoder_loader: Callable[[Path], nn.Module] | None = None) -> "FacePhiModel":
        """Load a saved model. ``encoder_loader(path)`` defaults to ``LandmarkEncoder.from_pretrained``."""
        parts = load_parts(directory, encoder_loader)
        model = cls(parts.config, parts.encoder, parts.llm, parts.tokenizer)
        model.projector.load_state_dict(parts.projector)
        if parts.adapter is not None:
            model._inject_lora()
            if set(parts.adapter) != set(model.lora_state_dict()):
                raise FacePhiError(f"{Path(directory) / 'adapter'}: the adapter does not match config.lora and the LLM")
            model.llm.load_state_dict(parts.adapter, strict=False)
        model.requires_grad_(False)
        return model.eval()
