"""Class scoring (rank classification, beside free generation): :class:`ClassScorer`, held by
``FacePhiModel``.

``log_likelihoods`` gives, per face, the log-probability of each of the 8 class answers (answer
text + [EOS], exactly the tokens ``encode_train`` places after the prompt). Two computations give
the same scores: ``tree_scores`` (the fast one: each face's prompt and its class answers as one
token tree after the shared prefix's cache, one LLM pass per group of faces) and ``plain_scores``
(the reference: the prompt once per face, its key/value cache repeated for the continuations).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from facephi.data.instruction import IGNORE_INDEX
from facephi.data.templates import ANSWER_TEMPLATES, SCORE_TEMPLATES
from facephi.labels import CLASSES, display_name
from facephi.model.prefix import SharedPrefix, position_ids
from facephi.model.tree import TokenTree, pack
from facephi.utils.errors import FacePhiError

SCORE_TOKENS = 8192
"""Tokens (faces x tree) per LLM pass of the fast class scoring (``tree_scores``): bounds its memory."""

SCORE_ROWS = 512
"""Continuation rows (face x template x class) per LLM pass of the plain scoring: bounds the memory of
the repeated key/value cache (templates are scored in groups that fit)."""

HEAD_ROWS = 256
"""States per LM-head call when reading a tree's columns (bounds the [rows, vocabulary] logits)."""

TokenBias = tuple[list[int], torch.Tensor]
"""(token ids, float32 ``[B, len(ids)]``: per row of the batch, the numbers added to their logits before
the greedy argmax): ``model/answer_prior.py``."""

Embed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``embed(input_ids, points)``: token embeddings with the landmark features in place."""


def shared_length(per_class: list[list[int]]) -> int:
    """How many leading tokens the answers of one template share (each keeps at least its last)."""
    n = 0
    while all(len(seq) > n + 1 and seq[n] == per_class[0][n] for seq in per_class):
        n += 1
    return n


@dataclass
class ScoreTree:
    """Faces' prompts (after the shared prefix) with their class answers as token trees.

    ``rows[b]``: face b's prompt rest (a chain from the prefix's cache) and below its last token
    ``prompt_last[b]`` the answers ``answers[t][k]`` without their last token ([EOS], it predicts
    nothing). ``terms``: (row, predicting column, target token, template, class) of every answer
    token; the answers' shared words share their columns.
    """

    rows: list[TokenTree]
    prompt_last: list[int]
    terms: list[tuple[int, int, int, int, int]]

    @classmethod
    def build(cls, rests: list[list[int]], answers: list[list[list[int]]], start: int) -> "ScoreTree":
        rows, prompt_last, terms = [], [], []
        for b, rest in enumerate(rests):
            tree = TokenTree()
            last = tree.add_chain(rest, -1, start)[-1]
            for t, per_class in enumerate(answers):
                for k, seq in enumerate(per_class):
                    predicting = [last] + tree.add_chain(seq[:-1], last, start + len(rest))
                    terms += [(b, column, token, t, k) for column, token in zip(predicting, seq)]
            rows.append(tree)
            prompt_last.append(last)
        return cls(rows, prompt_last, terms)


def read_columns(prefix: SharedPrefix, states: torch.Tensor, cells: torch.Tensor, term_cell: torch.Tensor,
                 term_target: torch.Tensor, suppressed: list[int] | None = None, bias: TokenBias | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One LM-head pass over the states at ``cells`` [U, 2] (row, column): the log-probabilities of the
    targets ``term_target`` [N] predicted by ``cells[term_cell]``, and with ``suppressed`` (token ids
    never chosen) each cell's greedy token (argmax of its logits plus its row's ``bias``, the first on a
    tie)."""
    log_probs = torch.zeros(len(term_cell), dtype=torch.float32, device=states.device)
    greedy = None if suppressed is None else torch.zeros(len(cells), dtype=torch.long, device=states.device)
    for first in range(0, len(cells), HEAD_ROWS):
        last = min(first + HEAD_ROWS, len(cells))
        logits = prefix.logits(states[cells[first:last, 0], cells[first:last, 1]])
        if greedy is not None:
            chosen = logits.index_fill(1, torch.tensor(suppressed, device=logits.device, dtype=torch.long), -math.inf)
            if bias is not None:
                rows = cells[first:last, 0].to(bias[1].device)
                chosen[:, bias[0]] += bias[1][rows].to(device=chosen.device, dtype=chosen.dtype)
            greedy[first:last] = chosen.argmax(-1)
        here = (term_cell >= first) & (term_cell < last)
        if bool(here.any()):
            log_probs[here] = logits.log_softmax(-1)[term_cell[here] - first, term_target[here]]
    return log_probs, greedy


class ClassScorer:
    """Log-likelihood of each class answer to a prompt (the prompt's ``formatter``; ``embed`` puts
    the landmark features into the token embeddings)."""

    def __init__(self, formatter: Any, embed: Embed) -> None:
        self.formatter, self.embed = formatter, embed
        self._answer_ids_cache: dict[str, list[int]] = {}

    def answer_ids(self, answer: str) -> list[int]:
        """The tokens ``encode_train`` puts after the prompt for ``answer`` (its label tokens, [EOS] last)."""
        if answer not in self._answer_ids_cache:
            labels = self.formatter.encode_train("", answer)["labels"]
            self._answer_ids_cache[answer] = labels[labels != IGNORE_INDEX].tolist()
        return self._answer_ids_cache[answer]

    def answers(self, templates: str = "first") -> list[list[list[int]]]:
        """``[t][k]``: the label tokens of template t filled with class k (``"first"``: template 0 only)."""
        if templates not in SCORE_TEMPLATES:
            raise FacePhiError(f"templates must be one of {SCORE_TEMPLATES}, got {templates!r}")
        chosen = ANSWER_TEMPLATES[:1] if templates == "first" else ANSWER_TEMPLATES
        return [[self.answer_ids(t.format(emotion=display_name(name))) for name in CLASSES] for t in chosen]

    def log_likelihoods(self, prefix: SharedPrefix, points: torch.Tensor, instructions: list[str],
                        templates: str = "first", fast: bool = True) -> torch.Tensor:
        """Log-likelihood ``[B, 8]`` (classes in ``CLASSES`` order); see
        ``FacePhiModel.class_log_likelihoods``. ``fast``: the tree pass where it applies."""
        answers = self.answers(templates)
        scores = self.tree_scores(prefix, points, instructions, answers) if fast else None
        if scores is None:
            scores = self.plain_scores(prefix, points, instructions, answers, fast)
        return reduce_templates(scores)

    def tree_scores(self, prefix: SharedPrefix, points: torch.Tensor, instructions: list[str],
                    answers: list[list[list[int]]]) -> torch.Tensor | None:
        """``plain_scores`` in one LLM pass per group of faces, or None where it does not apply (a
        prompt cut by ``max_length``, an attention implementation other than sdpa / eager).

        Each face is one row after the shared prefix's cache (``ScoreTree``): its prompt's rest, then
        its class answers as a token tree, each token at the position it has in its own sequence
        and attending to the prefix and its ancestors only: every state equals the state of that
        token in the plain sequence [prompt, answer].
        """
        prompts = [self.formatter.encode_prompt(text) for text in instructions]
        if not prefix.tree_attention_supported() or not all(prefix.starts(ids) for ids in prompts):
            return None
        p = len(prefix.ids)
        layout = ScoreTree.build([ids[p:] for ids in prompts[:1]], answers, p)
        faces_per_pass = max(1, SCORE_TOKENS // (max(len(ids) for ids in prompts) - p + len(layout.rows[0])))
        kv = prefix.kv(points.device)
        scores = []
        for first in range(0, len(prompts), faces_per_pass):
            layout = ScoreTree.build([ids[p:] for ids in prompts[first:first + faces_per_pass]], answers, p)
            states = self.run_tree(prefix, layout.rows, points[first:first + faces_per_pass], kv)[0]
            scores.append(self.tree_totals(prefix, layout, states, len(answers))[0])
        return torch.cat(scores)

    def run_tree(self, prefix: SharedPrefix, rows: list[TokenTree], points: torch.Tensor,
                 kv: Any) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """``rows`` (each from the prefix's cache) through the LLM: (states, cache, real [B, W])."""
        ids, positions, sees, real = pack(rows, self.formatter.pad_id, points.device)
        past = torch.ones(len(rows), len(prefix.ids), dtype=torch.bool, device=points.device)
        states, cache = prefix.run_tree(self.embed(ids, points), positions, sees, past, prefix.expand(kv, len(rows)))
        return states, cache, real

    @staticmethod
    def tree_totals(prefix: SharedPrefix, layout: ScoreTree, states: torch.Tensor, n_templates: int,
                    extra: list[tuple[int, int]] = (), suppressed: list[int] | None = None,
                    bias: TokenBias | None = None) -> tuple[torch.Tensor, dict[tuple[int, int], int]]:
        """Summed log-probabilities ``[B, T, 8]`` of ``layout``'s answers from ``states``; with
        ``suppressed`` (and ``bias``), also the greedy token of each predicting cell and of the ``extra``
        cells: ``{(row, column): token}``."""
        device = states.device
        cells: dict[tuple[int, int], int] = {}
        for row, column, *_ in layout.terms:
            cells.setdefault((row, column), len(cells))
        for cell in extra:
            cells.setdefault(cell, len(cells))
        index = torch.tensor(list(cells), dtype=torch.long, device=device).view(-1, 2)
        terms = torch.tensor(layout.terms, dtype=torch.long, device=device).view(-1, 5)
        term_cell = torch.tensor([cells[(row, column)] for row, column, *_ in layout.terms], dtype=torch.long,
                                 device=device)
        log_probs, greedy = read_columns(prefix, states, index, term_cell, terms[:, 2], suppressed, bias)
        total = torch.zeros(len(layout.rows), n_templates, len(CLASSES), dtype=torch.float32, device=device)
        total.index_put_((terms[:, 0], terms[:, 3], terms[:, 4]), log_probs, accumulate=True)
        chosen = {} if greedy is None else dict(zip(cells, greedy.tolist()))
        return total, chosen

    # ------------------------------------------------------------------ the plain reference
    def plain_scores(self, prefix: SharedPrefix, points: torch.Tensor, instructions: list[str],
                     answers: list[list[list[int]]], fast: bool = False) -> torch.Tensor:
        """Log-likelihoods ``[B, T, K]`` of ``answers[t][k]`` (token ids) after each prompt: the prompt
        runs once per face (from the shared prefix's cache with ``fast``), its key/value cache is
        repeated per template, the template's words shared by the classes run once per (face,
        template), then the cache is repeated 8x for the class-specific rest (right padded and masked,
        positions continuing after each prompt's last real token)."""
        device = points.device
        batch = self.formatter.pad_prompts([self.formatter.encode_prompt(text) for text in instructions])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        split = prefix.split(ids, mask) if fast else None
        if split is None:
            states, prompt_cache = prefix.step(self.embed(ids, points), mask, position_ids(mask), None)
        else:  # the shared prefix from its cache; ``mask`` now covers prefix + rows
            states, prompt_cache, mask = prefix.run_rows(self.embed(split[0], points), split[1])
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
                total, last, cache = self._continuation(prefix, last, cache, past_mask, start, prefixes)
                width = max(shared)
                prefix_mask = (torch.arange(width) < torch.tensor(shared)[:, None]).long().to(device)
                past_mask = torch.cat([past_mask, prefix_mask.repeat(faces, 1)], 1)
                start = start + torch.tensor(shared, device=device).repeat(faces)
            # the class-specific rest: one row per (face, template, class), order (b * g + t) * K + k
            cache.batch_repeat_interleave(n_classes)
            rest = [part[(row // n_classes) % g][row % n_classes][shared[(row // n_classes) % g]:]
                    for row in range(faces * g * n_classes)]
            tail, _, _ = self._continuation(prefix, last.repeat_interleave(n_classes, 0), cache,
                                            past_mask.repeat_interleave(n_classes, 0),
                                            start.repeat_interleave(n_classes), rest, run_last=not fast)
            scores.append((total.repeat_interleave(n_classes) + tail).view(faces, g, n_classes))
        return torch.cat(scores, dim=1)

    def _continuation(self, prefix: SharedPrefix, last: torch.Tensor, cache: Any, past_mask: torch.Tensor,
                      start: torch.Tensor, sequences: list[list[int]],
                      run_last: bool = True) -> tuple[torch.Tensor, torch.Tensor, Any]:
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
            states, cache = prefix.step(prefix.llm.get_input_embeddings()(ids[:, :run_width]),
                                        torch.cat([past_mask, run_mask], 1), positions, cache)
        else:
            states = last[:, None][:, :0]
        predicting = torch.cat([last[:, None], states], dim=1)  # column j predicts token j
        real = mask.bool()
        log_probs = torch.zeros(ids.shape, dtype=torch.float32, device=device)
        log_probs[real] = prefix.token_log_probs(predicting[:, :width][real], ids[real])
        after = predicting[torch.arange(rows, device=device), run_mask.sum(1)]
        return log_probs.sum(1), after, cache


def reduce_templates(scores: torch.Tensor) -> torch.Tensor:
    """``[B, T, 8]`` -> ``[B, 8]``: the one template's scores, or ``log(mean_t p)`` over T templates."""
    if scores.shape[1] == 1:
        return scores[:, 0]
    return torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])


def class_probabilities(scores: torch.Tensor, prior: Any = None) -> torch.Tensor:
    """Softmax over the classes of ``scores`` [B, 8], after logit adjustment by ``prior`` (see
    ``FacePhiModel.class_probabilities``)."""
    if prior is not None:
        prior = torch.as_tensor(prior, dtype=torch.float64).cpu()  # float64: tiny priors (prior ** tau) stay > 0
        if prior.shape != (len(CLASSES),) or not bool(torch.isfinite(prior).all() and (prior > 0).all()):
            raise FacePhiError(f"prior: need {len(CLASSES)} finite positive numbers, got {prior.tolist()}")
        scores = scores - prior.log().to(device=scores.device, dtype=scores.dtype)
    return torch.softmax(scores, dim=-1)
