"""Keeping a position-addressed KV cache in step with the committed sequences.

Models here write keys/values at explicit positions (gpt-fast's design), so "rolling back" rejected
draft tokens costs nothing: the cache simply forgets how far it is valid, and the next forward pass
overwrites those slots. ``PrefixCache`` remembers, per row, which token ids the cache holds, and feeds a
model only the suffix of each sequence that it has not seen. The same mechanism serves a verifier
(feed the last committed token plus k draft tokens), a draft model (feed one token per draft step, and
one or two to catch up after a round) and a draft with another tokenizer (whose re-tokenized sequence
may change anywhere after a common prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class IncrementalModel(Protocol):
    """A decoder with a KV cache of fixed capacity, addressed by (row, position)."""

    @property
    def device(self) -> torch.device: ...

    def forward_cached(self, rows: Tensor, tokens: Tensor, start: Tensor, output_index: Tensor) -> Tensor:
        """Run ``tokens`` [b, T] at positions start[r] .. start[r]+T-1 of rows ``rows`` [b].

        Writes their keys/values into the cache at those positions; each token attends to the cached
        positions 0 .. its own. Returns logits [b, N, V] for the token indices ``output_index`` [b, N]
        (indices into T), so that the output projection runs only where logits are needed.
        """
        ...


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """Feeds an ``IncrementalModel`` only what its cache lacks, row by row."""

    def __init__(self, model: IncrementalModel, batch_size: int, pad_token_id: int = 0):
        self.model = model
        self.pad_token_id = pad_token_id
        self.cached: list[list[int]] = [[] for _ in range(batch_size)]

    def forget(self, rows: Sequence[int]) -> None:
        """Rows that start over with another input (their model state, e.g. cross-attention over other
        audio, is no longer what the cache was computed from): their next call reads everything."""
        for row in rows:
            self.cached[row] = []

    def logits(self, rows: Tensor, sequences: Sequence[Sequence[int]], n_last: Sequence[int]) -> Tensor:
        """Logits [b, max(n_last), V] at the last ``n_last[i]`` positions of each sequence.

        Row i's entry j scores the token after ``sequences[i][: len - n_last[i] + j + 1]``; entries past
        ``n_last[i]`` are padding. Afterwards the cache of each row holds exactly ``sequences[i]``.
        """
        tokens, starts, output_index = self.pending(rows, sequences, n_last)
        device = self.model.device
        logits = self.model.forward_cached(rows.to(device), tokens.to(device), starts.to(device),
                                           output_index.to(device))
        for row, sequence in zip(rows.tolist(), sequences):
            self.cached[row] = list(sequence)
        return logits

    def pending(self, rows: Tensor, sequences: Sequence[Sequence[int]],
                n_last: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """What the model must read for ``logits`` (which feeds it exactly this), on the CPU.

        Returns (tokens [b, T]: each row's suffix its cache lacks, padded; start [b]: the position of
        each row's first token; output_index [b, max(n_last)]: indices into T of the wanted positions).
        """
        starts, feeds = [], []
        for row, sequence, last in zip(rows.tolist(), sequences, n_last):
            if not 1 <= last <= len(sequence):
                raise ValueError(f"need 1 <= n_last <= len(sequence), got {last} for length {len(sequence)}")
            start = min(common_prefix_length(self.cached[row], sequence), len(sequence) - last)
            starts.append(start)
            feeds.append(sequence[start:])
        width = max(len(f) for f in feeds)
        tokens = torch.full((len(feeds), width), self.pad_token_id, dtype=torch.long)
        n_out = max(n_last)
        output_index = torch.zeros((len(feeds), n_out), dtype=torch.long)
        for i, (feed, last) in enumerate(zip(feeds, n_last)):
            tokens[i, : len(feed)] = torch.tensor(feed, dtype=torch.long)
            first = len(feed) - last
            # padding entries repeat the last real index: harmless, and they are never read
            output_index[i] = torch.arange(first, first + n_out).clamp_max(len(feed) - 1)
        return tokens, torch.tensor(starts, dtype=torch.long), output_index
