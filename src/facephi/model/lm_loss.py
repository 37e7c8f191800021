"""Pieces of the FacePhi training loss: weighted means over label tokens and length groups."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facephi.data.instruction import IGNORE_INDEX
from facephi.utils.errors import FacePhiError

PASS_OVERHEAD_TOKENS = 48
"""``length_groups``: the cost of one more LLM pass, in padded tokens (measured on CPU with SmolLM2)."""


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


def token_nll_sum(states: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module | None,
                  weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(sum of the label tokens' NLL, each times its row's weight; sum of those weights): the weighted
    mean's numerator and denominator (0 with no label token). ``states`` [B, T, *] predict ``targets``
    [B, T] (-100: none): hidden states through ``head``, or logits when ``head`` is None."""
    selected = targets != IGNORE_INDEX
    if not bool(selected.any()):
        return states.new_zeros(()), 0.0
    logits = states[selected]
    if head is not None:
        logits = head(logits)
    nll = F.cross_entropy(logits.float(), targets[selected], reduction="none")
    if weights is None:
        return nll.sum(), float(nll.numel())
    token_weights = weights.to(nll.device, torch.float32)[:, None].expand(targets.shape)[selected]
    return (nll * token_weights).sum(), token_weights.sum()
