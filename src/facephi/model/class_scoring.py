"""Class scoring (rank classification, beside free generation), a mixin of ``FacePhiModel``.

``class_log_likelihoods`` gives, per face, the log-probability of each of the 8 class answers
(answer text + [EOS], exactly the tokens ``encode_train`` places after the prompt) and
``class_probabilities`` their softmax over the classes. The prompt runs once per face; its
key/value cache is reused for the continuations (see ``class_log_likelihoods``). With the model's
fast path the prompt, the template words the classes share and the class continuations run as one
token tree in a single pass (``_score_tree``).

The mixin uses the model's ``llm``, ``config``, ``formatter``, ``projector``, ``fast_path``,
``embed`` and its shared-prefix helpers (``_split_prefix``, ``_prefix_kv``, ``_prefix_cache``,
``_run_after_prefix``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from facephi.data.instruction import IGNORE_INDEX
from facephi.data.templates import ANSWER_TEMPLATES, SCORE_TEMPLATES
from facephi.labels import CLASSES, display_name
from facephi.utils.errors import FacePhiError

SCORE_TOKENS = 8192
"""Tokens (faces x tree) per LLM pass of the fast class scoring (``_score_tree``): bounds its memory."""

SCORE_ROWS = 512
"""Continuation rows (face x template x class) per LLM pass of class scoring: bounds the memory of
the repeated key/value cache (templates are scored in groups that fit)."""


def shared_length(per_class: list[list[int]]) -> int:
    """How many leading tokens the answers of one template share (each keeps at least its last)."""
    n = 0
    while all(len(seq) > n + 1 and seq[n] == per_class[0][n] for seq in per_class):
        n += 1
    return n


class ClassScoringMixin:
    """Log-likelihood of each class answer to a prompt, and the class probabilities from them."""

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
        shared = [shared_length(per_class) for per_class in answers]
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
            shared = [shared_length(per_class) for per_class in part]
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
