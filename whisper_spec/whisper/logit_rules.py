"""Whisper's greedy logit rules, applied identically by the target, its drafts and the baseline.

They are what transformers' ``generate`` applies to a Whisper checkpoint without timestamps:
``suppress_tokens`` are never emitted, and ``begin_suppress_tokens`` (the blank and end-of-text) are
not allowed as the first generated token. Each position of a k-token verify pass gets the rule its own
prefix calls for, so a verify pass decides exactly what k plain steps would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class SuppressionRules:
    """``LogitRules`` (see ``core.model_roles``) for Whisper decoding without timestamps."""

    prompt_lengths: tuple[int, ...]  # per batch row: tokens before the first generated one
    suppress_tokens: tuple[int, ...]  # ids never generated
    begin_suppress_tokens: tuple[int, ...]  # ids not allowed as the first generated token
    # (vocabulary size, device) -> the suppressed ids as an index tensor there, built once: a list index
    # would be rebuilt (and, on a GPU, copied there) at every call (CPU, one position: 0.024 -> 0.009 ms)
    _indices: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def _suppressed(self, vocab: int, device: torch.device) -> Tensor:
        key = (vocab, device)
        if key not in self._indices:
            self._indices[key] = torch.tensor([t for t in self.suppress_tokens if t < vocab], dtype=torch.long,
                                              device=device)
        return self._indices[key]

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor) -> Tensor:
        """logits [b, K+1, V] -> [b, K+1, V] with -inf where a rule forbids the token."""
        vocab = logits.shape[-1]
        logits = logits.index_fill(2, self._suppressed(vocab, logits.device), -torch.inf)
        begin = [t for t in self.begin_suppress_tokens if t < vocab]
        if begin:
            for i, (row, sequence) in enumerate(zip(rows.tolist(), sequences)):
                # position j scores the token at index len(sequence) + j of the full sequence
                first_generated = self.prompt_lengths[row] - len(sequence)
                if 0 <= first_generated < logits.shape[1]:
                    logits[i, first_generated, begin] = -torch.inf
        return logits

    def tensors(self, vocab: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """These rules as the inputs of ``suppress_at_positions``: (prompt lengths [B] long, suppressed [V]
        bool, suppressed first [V] bool)."""
        suppress = torch.zeros(vocab, dtype=torch.bool, device=device)
        suppress[self._suppressed(vocab, device)] = True
        begin = torch.zeros(vocab, dtype=torch.bool, device=device)
        begin[[t for t in self.begin_suppress_tokens if t < vocab]] = True
        return torch.tensor(self.prompt_lengths, dtype=torch.long, device=device), suppress, begin


def suppress_at_positions(logits: Tensor, positions: Tensor, prompt_lengths: Tensor, suppress: Tensor,
                          begin: Tensor) -> Tensor:
    """``SuppressionRules`` as a function of tensors, for one position of every batch row (no host work).

    logits [B, V] choose the token at index ``positions`` [B] of each row's full sequence; the other
    arguments come from ``SuppressionRules.tensors``. Returns logits with -inf where a rule forbids.
    """
    first = (positions == prompt_lengths)[:, None]
    return logits.masked_fill(suppress[None, :] | (first & begin[None, :]), -torch.inf)
