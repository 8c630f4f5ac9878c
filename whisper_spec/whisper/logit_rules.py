"""Whisper's greedy logit rules, applied identically by the target, its drafts and the baseline.

They are what transformers' ``generate`` applies to a Whisper checkpoint without timestamps:
``suppress_tokens`` are never emitted, and ``begin_suppress_tokens`` (the blank and end-of-text) are
not allowed as the first generated token. Each position of a k-token verify pass gets the rule its own
prefix calls for, so a verify pass decides exactly what k plain steps would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class SuppressionRules:
    """``LogitRules`` (see ``core.model_roles``) for Whisper decoding without timestamps."""

    # per batch row: tokens before the first generated one (``admit`` changes a row's when a window joins it)
    prompt_lengths: list[int]
    suppress_tokens: tuple[int, ...]  # ids never generated
    begin_suppress_tokens: tuple[int, ...]  # ids not allowed as the first generated token
    # (vocabulary size, device) -> ``tensors``, built once: rebuilt at every call (and, on a GPU, copied
    # there) they cost more than applying them
    _tensors: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_lengths", list(self.prompt_lengths))

    def admit(self, row: int, prompt_length: int) -> None:
        """Row ``row`` starts a new window whose prompt is ``prompt_length`` tokens (the tensors already
        built are updated in place: a captured CUDA graph reads them where they are)."""
        self.prompt_lengths[row] = prompt_length
        for lengths, _, _ in self._tensors.values():
            lengths[row] = prompt_length

    def tensors(self, vocab: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """These rules as the inputs of ``suppress_at_positions``: (prompt lengths [B] long, suppressed [V]
        bool, suppressed first [V] bool)."""
        key = (vocab, device)
        if key not in self._tensors:
            suppress = torch.zeros(vocab, dtype=torch.bool, device=device)
            suppress[[t for t in self.suppress_tokens if t < vocab]] = True
            begin = torch.zeros(vocab, dtype=torch.bool, device=device)
            begin[[t for t in self.begin_suppress_tokens if t < vocab]] = True
            self._tensors[key] = (torch.tensor(self.prompt_lengths, dtype=torch.long, device=device), suppress, begin)
        return self._tensors[key]

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor) -> Tensor:
        """logits [b, K+1, V] -> [b, K+1, V] with -inf where a rule forbids the token."""
        device = logits.device
        prompt_lengths, suppress, begin = self.tensors(logits.shape[-1], device)
        # position j of row i scores the token at index len(sequences[i]) + j of its full sequence
        positions = (torch.tensor([len(s) for s in sequences], device=device)[:, None]
                     + torch.arange(logits.shape[1], device=device))
        return suppress_at_positions(logits, positions, prompt_lengths[rows.to(device)][:, None], suppress, begin)


def suppress_at_positions(logits: Tensor, positions: Tensor, prompt_lengths: Tensor, suppress: Tensor,
                          begin: Tensor) -> Tensor:
    """Token suppression as a function of tensors (no host work): the one place it is written.

    logits [..., V] choose the tokens at index ``positions`` [...] of their rows' full sequences, whose
    first generated token is at ``prompt_lengths`` (broadcast against ``positions``); ``suppress`` [V]
    and ``begin`` [V] (bool) are never generated and not generated first. Returns a copy of ``logits``
    with -inf where a rule forbids the token.
    """
    first = (positions == prompt_lengths)[..., None]
    return logits.masked_fill(suppress | (first & begin), -torch.inf)
