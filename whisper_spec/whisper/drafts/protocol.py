"""What a Whisper draft is started with (``DraftSetup``), what joins it (``WindowBatch``) and what the
engine asks of it (``WhisperDraft``, ``WindowDrafter``).

A draft is started once for a number of rows; windows then join rows as earlier windows leave them
(between speculative rounds), so one started draft serves a whole stream of windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import Tensor

from whisper_spec.core.protocols import Drafter, DraftRequest, Proposal
from whisper_spec.whisper.logit_rules import SuppressionRules
from whisper_spec.whisper.timestamps import TimestampRules

DEFAULT_DRAFT_LENGTH = 6  # the most draft tokens per round, for drafts that do not stop their own rounds


@dataclass(frozen=True)
class DraftSetup:
    """What every draft may need to start."""

    capacity: int  # rows: the most windows decoded together
    frames: int  # encoder frames per window (the cross-attention length)
    rules: SuppressionRules | TimestampRules  # the target's logit rules for every row (updated as windows join)
    task: str
    # [capacity, P, D] the target's final hidden state at every position it has read, kept up to date by
    # the verify passes; recorded only for a draft whose ``reads_target_states`` is True
    target_states: Tensor | None = None


@dataclass(frozen=True)
class WindowBatch:
    """Windows joining a started draft, one per row of ``rows``."""

    rows: Sequence[int]  # the rows they take (whatever those rows decoded before has left)
    audio: Sequence[np.ndarray]  # n mono 16 kHz windows, each at most 30 s
    target_encoder_hidden: Tensor  # [n, S, D] the target's encoder outputs
    prompts: Sequence[Sequence[int]]  # n target decoder prompts
    language: Sequence[str]  # n language codes (for a multilingual draft's own prompt)


class WindowDrafter(Drafter, Protocol):
    """A ``Drafter`` whose rows windows join between rounds."""

    def admit(self, batch: WindowBatch) -> float:
        """Start drafting for ``batch``'s windows in its rows; returns the seconds of the draft's own encoder."""
        ...


class WhisperDraft(Protocol):
    draft_length: int  # the most tokens a round drafts, unless ``WindowOptions.draft_length`` says otherwise
    # the draft ends its round below this probability of its proposal, unless ``WindowOptions`` says
    # otherwise (0: never; a draft that stops itself is then only switched on or off, see core.draft_length)
    draft_confidence: float
    reads_target_states: bool  # the engine records the target's hidden states for it (``DraftSetup``)

    def start(self, setup: DraftSetup) -> WindowDrafter:
        """A drafter with ``setup.capacity`` rows, none of them holding a window yet."""
        ...


class Admitting:
    """A ``WindowDrafter`` made of a drafter and what admitting windows to it takes."""

    def __init__(self, drafter: Drafter, admit: Callable[[WindowBatch], float]):
        self.drafter = drafter
        self._admit = admit

    def propose(self, request: DraftRequest) -> Proposal:
        return self.drafter.propose(request)

    def admit(self, batch: WindowBatch) -> float:
        return self._admit(batch)
