"""Greedy answers with template-drafted speculative decoding: the answers of greedy ``generate``,
in a few LLM passes instead of one per token.

The model was trained to give one of 80 sentences (``ANSWER_TEMPLATES`` x 8 classes), which differ
in a few tokens. :class:`AnswerTrie` holds their tokens. Each LLM pass runs, for every face, the
token decided last (or the prompt, in the first pass) and below it a draft: the continuations the
trie allows after the tokens decided so far, as a token tree (``model/tree.py``), the more probable
classes first (class probabilities of the same pass's scoring, when asked). The greedy token at
each drafted token is read from the pass; the draft is accepted as far as it equals what greedy
decoding would have produced, plus the greedy token after it: the output equals greedy decoding
by construction; the drafts favour the answers decoded most often so far (speed only: the output
does not depend on them). An answer that leaves the trie (the model mixes pieces of several trained
sentences) is drafted from the trained sentences where they hold the longest suffix of its tokens
decided so far (prompt-lookup drafting), and decoded token by token only where no sentence holds
even its last token. With class scoring, the first pass is also the scoring pass (the class
answers of the scored templates are the first draft): one forward serves both. ``bias`` (the
answer prior, ``model/answer_prior.py``, one row per face) is added to the logits before every
argmax, as ``generate`` adds it through ``ClassWordBias``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import torch

from facephi.model.class_scoring import ClassScorer, ScoreTree, TokenBias, read_columns
from facephi.model.prefix import SharedPrefix
from facephi.model.tree import TokenTree, pack

DRAFT_TOKENS = 32
"""Drafted tokens per LLM pass (after the first) for one face; a batch of B faces drafts
``max(DRAFT_MIN, DRAFT_TOKENS // B)`` each: one face's pass costs its weight reads, so a few dozen
more tokens are nearly free, while a batch's pass costs arithmetic for every token."""

DRAFT_MIN = 4
"""Drafted tokens per face and pass, at least (batches of 16: 2, 8, 12 or 16 answer no faster, within the
run-to-run spread; ``benchmarks/results/batch_drafts.md``)."""


SUFFIX_MATCH = 8
"""Longest suffix of an answer's decided tokens looked up in the trained sentences (off the trie)."""


class AnswerTrie:
    """Token trie of answers (their tokens without [EOS]), each counted for its class, and an index of
    their n-grams (n ≤ ``SUFFIX_MATCH``) for drafting answers that left the trie."""

    def __init__(self, answers: list[tuple[list[int], int]], n_classes: int, index: bool = True) -> None:
        self.n_classes, self.suffix_match = n_classes, SUFFIX_MATCH
        self.children: list[dict[int, int]] = [{}]
        self.counts: list[list[int]] = [[0] * n_classes]
        self.hits: list[int] = [0]
        """Per node: how many decoded answers went through it (``record``), to draft the usual ones first."""
        self.ngrams: dict[tuple[int, ...], list[tuple[list[int], int, int]]] = {}
        """n-gram -> (answer tokens, position after the n-gram, class) of each of its occurrences."""
        for tokens, label in answers:
            for end in range(1, len(tokens)) if index else ():  # an n-gram ending an answer drafts nothing
                for n in range(1, min(SUFFIX_MATCH, end) + 1):
                    self.ngrams.setdefault(tuple(tokens[end - n:end]), []).append((tokens, end, label))
            node = 0
            self.counts[0][label] += 1
            for token in tokens:
                if token not in self.children[node]:
                    self.children[node][token] = len(self.children)
                    self.children.append({})
                    self.counts.append([0] * n_classes)
                    self.hits.append(0)
                node = self.children[node][token]
                self.counts[node][label] += 1

    def record(self, tokens: list[int]) -> None:
        """Count a decoded answer on the nodes it went through (while it stayed on the trie)."""
        node: int | None = 0
        for token in tokens:
            node = self.step(node, token)
            if node is None:
                return
            self.hits[node] += 1

    def step(self, node: int | None, token: int) -> int | None:
        """The node after ``token`` (None: off the trie)."""
        return None if node is None else self.children[node].get(token)

    def draft_after(self, node: int | None, decided: list[int], budget: int, depth: int,
                    weights: list[float]) -> list[tuple[int, int, int]]:
        """``draft`` below ``node`` while the answer is on the trie; off it, the same from a trie of the
        continuations of every trained answer that holds the longest suffix of ``decided`` found."""
        if node is not None:
            return self.draft(node, budget, depth, weights)
        for n in range(min(self.suffix_match, len(decided)), 0, -1):
            found = self.ngrams.get(tuple(decided[-n:]))
            if found:
                rests = [(tokens[end:end + depth], label) for tokens, end, label in found]
                return AnswerTrie(rests, self.n_classes, index=False).draft(0, budget, depth, weights)
        return []

    def draft(self, node: int | None, budget: int, depth: int, weights: list[float]) -> list[tuple[int, int, int]]:
        """Up to ``budget`` trie tokens below ``node``, at most ``depth`` deep, best first by the summed
        class ``weights`` of the answers through them times 1 + the decoded answers that went through
        them: ``(token, parent index in the list or -1, depth)``, parents before children."""
        if node is None or budget <= 0 or depth <= 0:
            return []
        order = 0
        heap: list[tuple[float, int, int, int, int, int]] = []

        def push(parent_node: int, parent_index: int, level: int) -> None:
            nonlocal order
            for token, child in self.children[parent_node].items():
                weight = sum(w * c for w, c in zip(weights, self.counts[child])) * (1 + self.hits[child])
                heapq.heappush(heap, (-weight, order, token, child, parent_index, level))
                order += 1

        push(node, -1, 1)
        out: list[tuple[int, int, int]] = []
        while heap and len(out) < budget:
            _, _, token, child, parent_index, level = heapq.heappop(heap)
            out.append((token, parent_index, level))
            if level < depth:
                push(child, len(out) - 1, level + 1)
        return out


@dataclass
class Row:
    """One face being answered: tokens decided so far, its trie node, where its answer starts."""

    start: int  # position of the first answer token
    tokens: list[int] = field(default_factory=list)
    node: int | None = 0
    done: bool = False


class TemplateDecoder:
    """Greedy decoding with drafts from ``trie`` (see the module docstring); ``scorer`` gives the
    prompt layout and embeddings, ``eos_id`` ends an answer, ``suppressed`` tokens are never chosen
    (as ``generate``'s ``suppress_tokens``)."""

    def __init__(self, scorer: ClassScorer, trie: AnswerTrie, eos_id: int, suppressed: list[int],
                 draft_tokens: int = DRAFT_TOKENS) -> None:
        self.scorer, self.trie, self.eos_id = scorer, trie, eos_id
        self.suppressed, self.draft_tokens = suppressed, draft_tokens
        self.passes = 0
        """LLM passes of the last ``decode`` (for tests and benchmarks)."""

    def decode(self, prefix: SharedPrefix, points: torch.Tensor, prompts: list[list[int]], max_new_tokens: int,
               answers: list[list[list[int]]] | None = None, bias: TokenBias | None = None
               ) -> tuple[list[list[int]], torch.Tensor | None]:
        """Greedy answer tokens (without [EOS]) of each prompt (ids starting with the shared prefix,
        ``SharedPrefix.starts``), and with ``answers`` (``ClassScorer.answers``) their summed
        log-likelihoods ``[B, T, 8]`` from the first pass. ``bias``: each prompt's token bias, added to
        its logits before every argmax."""
        p, device = len(prefix.ids), points.device
        rests = [ids[p:] for ids in prompts]
        rows = [Row(start=len(ids)) for ids in prompts]
        layout = ScoreTree.build(rests, answers or [], p)
        if not answers:  # the first draft from the trie itself
            budget = min(self.draft_tokens, max(DRAFT_MIN, self.draft_tokens // len(rows)))
            for row, tree, last in zip(rows, layout.rows, layout.prompt_last):
                self._add_draft(tree, last, row, [1.0] * self.trie.n_classes, max_new_tokens, budget)
        kv = prefix.kv(device)
        states, cache, real = self.scorer.run_tree(prefix, layout.rows, points, kv)
        self.passes = 1
        extra = [(b, c) for b, (tree, last) in enumerate(zip(layout.rows, layout.prompt_last))
                 for c in range(last, len(tree))]
        scores, greedy = ClassScorer.tree_totals(prefix, layout, states, len(answers or []), extra, self.suppressed,
                                                 bias)
        visible = torch.zeros_like(real)
        for b, (row, tree, last) in enumerate(zip(rows, layout.rows, layout.prompt_last)):
            visible[b, :last + 1] = True
            for column in self._walk(row, tree, last, b, greedy, max_new_tokens):
                visible[b, column] = True
        past = torch.cat([torch.ones(len(rows), p, dtype=torch.bool, device=device), visible], 1)
        adjusted = scores if bias is None or not answers else scores + bias[1].to(scores.device)[:, None, :]
        weights = (adjusted.softmax(-1).mean(1).tolist() if answers
                   else [[1.0] * self.trie.n_classes] * len(rows))
        active = list(range(len(rows)))
        while True:
            keep = [i for i, b in enumerate(active) if not rows[b].done]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                past = past[index]
                active = [active[i] for i in keep]
                if bias is not None:
                    bias = (bias[0], bias[1][index.to(bias[1].device)])
            trees, budget = [], min(self.draft_tokens, max(DRAFT_MIN, self.draft_tokens // len(active)))
            for b in active:
                tree = TokenTree()
                root = tree.add(rows[b].tokens[-1], -1, rows[b].start + len(rows[b].tokens) - 1)
                self._add_draft(tree, root, rows[b], weights[b], max_new_tokens, budget)
                trees.append(tree)
            ids, positions, sees, real = pack(trees, self.scorer.formatter.pad_id, device)
            states, cache = prefix.run_tree(prefix.llm.get_input_embeddings()(ids), positions, sees, past, cache)
            self.passes += 1
            cells = [(i, c) for i, tree in enumerate(trees) for c in range(len(tree))]
            none = torch.zeros(0, dtype=torch.long, device=device)
            _, tokens = read_columns(prefix, states, torch.tensor(cells, device=device), none, none, self.suppressed, bias)
            greedy = dict(zip(cells, tokens.tolist()))
            visible = torch.zeros_like(real)
            for i, (b, tree) in enumerate(zip(active, trees)):
                visible[i, 0] = True
                for column in self._walk(rows[b], tree, 0, i, greedy, max_new_tokens):
                    visible[i, column] = True
            past = torch.cat([past, visible], 1)
        for row in rows:
            self.trie.record(row.tokens)
        return [row.tokens for row in rows], scores if answers else None

    def _add_draft(self, tree: TokenTree, root: int, row: Row, weights: list[float], max_new_tokens: int,
                   budget: int) -> None:
        """Up to ``budget`` of the trie's continuations after ``row``'s tokens, below column ``root``."""
        base = tree.positions[root]
        columns: list[int] = []
        for token, parent, level in self.trie.draft_after(row.node, row.tokens, budget,
                                                          max_new_tokens - len(row.tokens), weights):
            columns.append(tree.add(token, root if parent < 0 else columns[parent], base + level))

    def _walk(self, row: Row, tree: TokenTree, column: int, b: int, greedy: dict[tuple[int, int], int],
              max_new_tokens: int) -> list[int]:
        """Decide ``row``'s tokens from the greedy tokens of ``tree``'s columns, starting at ``column``
        (the state predicting the next token): the columns of the accepted draft tokens."""
        accepted = []
        while True:
            token = greedy[(b, column)]
            if token == self.eos_id:
                row.done = True
                return accepted
            row.tokens.append(token)
            row.node = self.trie.step(row.node, token)
            if len(row.tokens) >= max_new_tokens:
                row.done = True
                return accepted
            child = tree.children.get(column, {}).get(token)
            if child is None:  # not drafted: run next time as the root
                return accepted
            accepted.append(child)
            column = child


def plain_greedy(llm: Any) -> bool:
    """Whether ``llm``'s own generation settings leave ``generate`` plain greedy decoding (nothing that
    ``FacePhiModel.generate`` does not set would change its tokens), so ``TemplateDecoder`` gives the
    same answers."""
    config = getattr(llm, "generation_config", None)
    if config is None:
        return True
    plain = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
             "bad_words_ids": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
             "sequence_bias": None, "begin_suppress_tokens": None, "exponential_decay_length_penalty": None,
             "encoder_repetition_penalty": 1.0, "renormalize_logits": False, "stop_strings": None,
             "max_time": None, "remove_invalid_values": False}
    for name, value in plain.items():
        got = getattr(config, name, value)
        if got is not None and got != value and not (value is None and got in ([], {})):
            return False
    return True
