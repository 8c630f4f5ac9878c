"""Whisper's timestamp grammar as position-dependent logit rules (openai/whisper ``ApplyTimestampRules``).

In timestamp mode a window's output is ``<|t0|> text <|t1|><|t1'|> text <|t2|> ... <|endoftext|>``:
timestamps come in pairs (except right before end-of-text), never decrease, the first token is a
timestamp of at most ``max_initial_timestamp_index`` × 20 ms, and whenever the timestamps together are
more likely than any single text token a timestamp must come next. Every rule depends only on the
prefix a position scores, so one k-token verify pass decides exactly what k plain steps would, and a
draft decoder that applies the same rules proposes tokens the grammar allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
    def prompt_lengths(self) -> tuple[int, ...]:
        return self.suppression.prompt_lengths

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor) -> Tensor:
        """logits [b, K+1, V] -> [b, K+1, V]; position j of row i scores the token after sequences[i] + drafts[i][:j]."""
        logits = self.suppression(rows, sequences, drafts, logits)
        b, positions, vocab = logits.shape
        begin = self.timestamp_begin
        # per (row, position): forbid text (ids < eot), forbid every timestamp, lowest allowed timestamp, first step
        no_text = torch.zeros(b, positions, dtype=torch.bool)
        no_timestamp = torch.zeros(b, positions, dtype=torch.bool)
        lowest = torch.full((b, positions), begin, dtype=torch.long)
        first = torch.zeros(b, positions, dtype=torch.bool)
        for i, (row, sequence, draft) in enumerate(zip(rows.tolist(), sequences, drafts)):
            prompt_length = self.suppression.prompt_lengths[row]
            generated = list(sequence[prompt_length:])
            extension = list(draft)
            for j in range(positions):
                sampled = generated + extension[:j]
                if not sampled:
                    first[i, j] = True
                    continue
                last_was_timestamp = sampled[-1] >= begin
                penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
                if last_was_timestamp:
                    if penultimate_was_timestamp:
                        no_timestamp[i, j] = True  # a pair just closed: text (or end) comes next
                    else:
                        no_text[i, j] = True  # a lone timestamp: its partner or the end comes next
                stamps = [t for t in sampled if t >= begin]
                if stamps:
                    # timestamps never decrease; a closing partner may repeat its opener's time
                    lowest[i, j] = stamps[-1] if last_was_timestamp and not penultimate_was_timestamp else stamps[-1] + 1
        device = logits.device
        ids = torch.arange(vocab, device=device)
        is_timestamp = ids >= begin
        no_text, no_timestamp = no_text.to(device)[..., None], no_timestamp.to(device)[..., None]
        lowest, first = lowest.to(device)[..., None], first.to(device)[..., None]
        forbid = (no_text & (ids < self.eot_token_id)) | (no_timestamp & is_timestamp)
        forbid |= is_timestamp & (ids < lowest)
        forbid |= first & ~is_timestamp
        if self.max_initial_timestamp_index is not None:
            forbid |= first & (ids > begin + self.max_initial_timestamp_index)
        forbid[..., self.no_timestamps_token_id] = True
        logits = logits.masked_fill(forbid, -torch.inf)
        # if the timestamps together outweigh every single text token, a timestamp comes next
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = logprobs[..., begin:].logsumexp(dim=-1)
        max_text_logprob = logprobs[..., :begin].max(dim=-1).values
        must_stamp = (timestamp_logprob > max_text_logprob)[..., None]
        return logits.masked_fill(must_stamp & ~is_timestamp, -torch.inf)


def timestamp_begin_id(tokenizer) -> int:
    """The id of <|0.00|> in this tokenizer (50364 in multilingual vocabularies, 50363 in English-only ones)."""
    vocab = tokenizer.get_vocab()
    if "<|0.00|>" not in vocab:
        raise ValueError("this tokenizer has no timestamp tokens (<|0.00|>)")
    return vocab["<|0.00|>"]
