"""Whisper's timestamp grammar as position-dependent logit rules (openai/whisper ``ApplyTimestampRules``).

In timestamp mode a window's output is ``<|t0|> text <|t1|><|t1'|> text <|t2|> ... <|endoftext|>``:
timestamps come in pairs (except right before end-of-text), never decrease, the first token is a
timestamp of at most ``max_initial_timestamp_index`` × 20 ms, and whenever the timestamps together are
more likely than any single text token a timestamp must come next. Every rule depends only on the
prefix a position scores, so one k-token verify pass decides exactly what k plain steps would, and a
draft decoder that applies the same rules proposes tokens the grammar allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from whisper_spec.whisper.logit_rules import SuppressionRules

TIME_PRECISION = 0.02  # seconds per timestamp step: <|1.00|> is 50 steps after <|0.00|>


@dataclass(frozen=True)
class TimestampRules:
    """``LogitRules`` (see ``core.model_roles``) for Whisper decoding with timestamps."""

    suppression: SuppressionRules  # suppressed tokens and the first-token rule, applied first (as Whisper does)
    timestamp_begin: int  # id of <|0.00|>; every id from here on is a timestamp
    no_timestamps_token_id: int  # <|notimestamps|>: never generated in timestamp mode
    eot_token_id: int  # end of text: the one non-timestamp allowed after a lone timestamp
    max_initial_timestamp_index: int | None = 50  # the first timestamp is at most this many steps (1.0 s)

    @property
    def prompt_lengths(self) -> list[int]:
        return self.suppression.prompt_lengths

    def admit(self, row: int, prompt_length: int) -> None:
        """See ``SuppressionRules.admit``."""
        self.suppression.admit(row, prompt_length)

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor) -> Tensor:
        """logits [b, K+1, V] -> [b, K+1, V]; position j of row i scores the token after
        sequences[i] + drafts[i][:j]."""
        logits = self.suppression(rows, sequences, drafts, logits)  # a copy: edited in place below
        positions = logits.shape[1]
        begin, eot = self.timestamp_begin, self.eot_token_id
        logits[..., self.no_timestamps_token_id] = -torch.inf
        # Each forbidden range is a slice of one position's row: a draft step and a verify pass call this
        # for every token, and full-vocabulary boolean masks cost several times the decoder step of a
        # small draft, where slices cost a fraction of it.
        for i, (row, sequence, draft) in enumerate(zip(rows.tolist(), sequences, drafts)):
            sampled = list(sequence[self.suppression.prompt_lengths[row]:]) + list(draft[: positions - 1])
            generated = len(sampled) - min(len(draft), positions - 1)  # position 0 scores sampled[generated]
            stamp = _last_timestamp(sampled[:generated], begin)
            for j in range(positions):
                n = generated + min(j, len(sampled) - generated)  # tokens before it (padding repeats the last)
                if 0 < j <= len(sampled) - generated and sampled[n - 1] >= begin:
                    stamp = sampled[n - 1]
                if n == 0:
                    logits[i, j, :begin] = -torch.inf  # the first token is a timestamp, and an early one
                    if self.max_initial_timestamp_index is not None:
                        logits[i, j, begin + self.max_initial_timestamp_index + 1:] = -torch.inf
                    continue
                last_was_timestamp = sampled[n - 1] >= begin
                penultimate_was_timestamp = n < 2 or sampled[n - 2] >= begin
                if last_was_timestamp and penultimate_was_timestamp:
                    logits[i, j, begin:] = -torch.inf  # a pair just closed: text (or end) comes next
                elif last_was_timestamp:
                    logits[i, j, :eot] = -torch.inf  # a lone timestamp: its partner or the end comes next
                if stamp is not None:
                    # timestamps never decrease; a closing partner may repeat its opener's time
                    closing = last_was_timestamp and not penultimate_was_timestamp
                    logits[i, j, begin: stamp if closing else stamp + 1] = -torch.inf
        # If the timestamps together outweigh every single text token, a timestamp comes next. Whisper
        # compares log-softmax values; the normaliser is common to both sides, so raw logits compare alike.
        timestamp_mass = logits[..., begin:].float().logsumexp(dim=-1)
        best_text = logits[..., :begin].float().amax(dim=-1)
        logits[..., :begin].masked_fill_((timestamp_mass > best_text)[..., None], -torch.inf)
        return logits


def _last_timestamp(tokens: Sequence[int], begin: int) -> int | None:
    """The last timestamp id among ``tokens``, None when there is none."""
    for token in reversed(tokens):
        if token >= begin:
            return token
    return None
