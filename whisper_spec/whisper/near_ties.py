"""Exact rescoring of Whisper near-ties, so half-precision speculative output equals half-precision greedy.

See ``core.model_roles.NearTieRule`` for the rule; this module supplies its Whisper rescorer (a float32
copy of the target's decoder, run on one prefix at a time from position 0) and the default margins.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from whisper_spec.whisper.decoder import CachedWhisperDecoder

# Top-two logit margins below which a position is rescored, per dtype. A margin must exceed twice the
# largest disagreement between a verify pass and a plain step over the same prefix (see
# ``evaluation/near_ties.py``, which measures it on real speech). These allow several times what base
# measured on a CPU (evaluation/results/measurements-behind-the-defaults.md), since a deeper model on
# GPU kernels may drift further. Run the measurement for your model and device before lowering them.
DEFAULT_MARGINS: dict[torch.dtype, float] = {torch.float16: 0.25, torch.bfloat16: 1.0}


def default_margin(dtype: torch.dtype) -> float:
    """The margin used when none is given: 0 (no rescoring) for float32 and wider types."""
    return DEFAULT_MARGINS.get(dtype, 0.0)


class ExactDecoder:
    """A float32 copy of a target decoder; built once per engine, begun lazily per batch of windows."""

    def __init__(self, decoder: torch.nn.Module):
        """``decoder``: the target's transformers ``WhisperDecoder`` (copied, then cast to float32)."""
        self.decoder = CachedWhisperDecoder(copy.deepcopy(decoder).float())

    def rescorer(self, capacity: int, frames: int) -> WindowRescorer:
        return WindowRescorer(self.decoder, capacity, frames)


class WindowRescorer:
    """A ``core.model_roles.Rescorer`` for ``capacity`` rows of windows of ``frames`` encoder frames."""

    def __init__(self, decoder: CachedWhisperDecoder, capacity: int, frames: int):
        self.decoder = decoder
        self.capacity, self.frames = capacity, frames
        self.encoder_hidden: dict[int, Tensor] = {}  # per row: [S, D] its window's encoder output
        self._begun: set[int] = set()
        self._reserved = False

    def admit(self, rows: Sequence[int], encoder_hidden: Tensor) -> None:
        """Windows with encoder outputs ``encoder_hidden`` [n, S, D] take rows ``rows``."""
        for row, hidden in zip(rows, encoder_hidden):
            self.encoder_hidden[row] = hidden
            self._begun.discard(row)

    @torch.inference_mode()
    def __call__(self, row: int, prefix: Sequence[int]) -> Tensor:
        """Float32 logits [V] after ``prefix``: the whole prefix in one pass from position 0, whatever
        the caller's cache held, so the answer does not depend on which path asked."""
        if not self._reserved:
            self.decoder.reserve(self.capacity, self.frames)
            self._reserved = True
        if row not in self._begun:  # cross-attention K/V in float32, only for windows that meet a near-tie
            self.decoder.begin_rows([row], self.encoder_hidden[row][None])
            self._begun.add(row)
        device = self.decoder.device
        tokens = torch.tensor([list(prefix)], device=device)
        logits = self.decoder.forward_cached(torch.tensor([row], device=device), tokens,
                                             torch.zeros(1, dtype=torch.long, device=device),
                                             torch.tensor([[len(prefix) - 1]], device=device))
        return logits[0, 0]
