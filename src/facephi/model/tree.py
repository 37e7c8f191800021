"""Token trees: several continuations of one prompt laid out flat and run in one LLM pass.

A :class:`TokenTree` row holds tokens with a parent each (a column of the same row, or none: the
token follows the cache directly) and a position; :func:`pack` turns rows into the ids, positions
and attention pattern of :meth:`SharedPrefix.run_tree`, where each token attends to the cache, its
ancestors and itself, so its state equals the one it has in its own plain sequence. Class scoring
lays the 8 class answers out this way; template-drafted decoding its drafts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenTree:
    """One row: ``tokens[c]`` at ``positions[c]``, attending to ``parents[c]``'s ancestry (-1: none)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    children: dict[int, dict[int, int]] = field(default_factory=dict)
    """parent column (-1: the root) -> token -> column: the tree's edges, for walking it."""

    def add(self, token: int, parent: int, position: int) -> int:
        """The column of ``token`` under ``parent`` (added unless that child exists)."""
        below = self.children.setdefault(parent, {})
        if token not in below:
            below[token] = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
            self.positions.append(position)
        return below[token]

    def add_chain(self, tokens: list[int], parent: int, position: int) -> list[int]:
        """``tokens`` one after the other below ``parent``, from ``position``: their columns."""
        columns = []
        for offset, token in enumerate(tokens):
            parent = self.add(token, parent, position + offset)
            columns.append(parent)
        return columns

    def __len__(self) -> int:
        return len(self.tokens)


def pack(rows: list[TokenTree], pad_id: int, device: torch.device
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [B, W], positions [B, W], sees [B, W, W] bool, real [B, W] bool) of ``rows``, right padded;
    a pad attends to itself only."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    parents = torch.arange(width).repeat(len(rows), 1)  # a pad (or a root token) is its own parent
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, row in enumerate(rows):
        n = len(row)
        ids[b, :n] = torch.tensor(row.tokens, dtype=torch.long)
        positions[b, :n] = torch.tensor(row.positions, dtype=torch.long)
        parents[b, :n] = torch.tensor([c if p < 0 else p for c, p in enumerate(row.parents)], dtype=torch.long)
        real[b, :n] = True
    sees = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)
    index = torch.arange(len(rows))
    for column in range(width):  # parents come before their children
        sees[:, column] |= sees[index, parents[:, column]]
    return ids.to(device), positions.to(device), sees.to(device), real.to(device)
