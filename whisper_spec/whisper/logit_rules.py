"""Whisper's greedy logit rules, applied identically by the target, its drafts and the baseline.

They are what transformers' ``generate`` applies to a Whisper checkpoint without timestamps:
``suppress_tokens`` are never emitted, and ``begin_suppress_tokens`` (the blank and end-of-text) are
not allowed as the first generated token. Each position of a k-token verify pass gets the rule its own
prefix calls for, so a verify pass decides exactly what k plain steps would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class SuppressionRules:
    """``LogitRules`` (see ``core.model_roles``) for Whisper decoding without timestamps."""

    prompt_lengths: tuple[int, ...]  # per batch row: tokens before the first generated one
    suppress_tokens: tuple[int, ...]  # ids never generated
    begin_suppress_tokens: tuple[int, ...]  # ids not allowed as the first generated token

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor) -> Tensor:
        """logits [b, K+1, V] -> [b, K+1, V] with -inf where a rule forbids the token."""
        logits = logits.clone()
        vocab = logits.shape[-1]
        suppress = [t for t in self.suppress_tokens if t < vocab]
        if suppress:
            logits[:, :, suppress] = -torch.inf
        begin = [t for t in self.begin_suppress_tokens if t < vocab]
        if begin:
            for i, (row, sequence) in enumerate(zip(rows.tolist(), sequences)):
                # position j scores the token at index len(sequence) + j of the full sequence
                first_generated = self.prompt_lengths[row] - len(sequence)
                if 0 <= first_generated < logits.shape[1]:
                    logits[i, first_generated, begin] = -torch.inf
        return logits
