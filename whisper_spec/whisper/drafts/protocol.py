"""What every Whisper draft starts from (``WindowBatch``) and what the engine asks of it (``WhisperDraft``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import Tensor

from whisper_spec.core.protocols import Drafter
from whisper_spec.whisper.logit_rules import SuppressionRules
from whisper_spec.whisper.timestamps import TimestampRules

DEFAULT_DRAFT_LENGTH = 6  # the most draft tokens per round, for drafts that do not stop their own rounds


@dataclass(frozen=True)
class WindowBatch:
    """What every draft may need to start on a batch of windows."""

    audio: Sequence[np.ndarray]  # B mono 16 kHz windows, each at most 30 s
    target_encoder_hidden: Tensor  # [B, S, D] the target's encoder outputs
    prompts: Sequence[Sequence[int]]  # B target decoder prompts
    rules: SuppressionRules | TimestampRules  # the target's logit rules for these prompts
    language: Sequence[str]  # B language codes (for a multilingual draft's own prompt)
    task: str
    # [B, P, D] the target's final hidden state at every position it has read, kept up to date by the
    # verify passes; recorded only for a draft whose ``reads_target_states`` is True
    target_states: Tensor | None = None


class WhisperDraft(Protocol):
    draft_length: int  # the most tokens a round drafts, unless ``WindowOptions.draft_length`` says otherwise
    # the draft ends its round below this probability of its proposal, unless ``WindowOptions`` says
    # otherwise (0: never; a draft that stops itself is then only switched on or off, see core.draft_length)
    draft_confidence: float
    reads_target_states: bool  # the engine records the target's hidden states for it (``WindowBatch``)

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        """A drafter for these windows, and the seconds spent on the draft's own encoder."""
        ...
