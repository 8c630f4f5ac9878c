"""Drafting across tokenizers through text: target ids -> text -> draft ids, and the draft's answer back.

A draft model with another tokenizer (Whisper tiny.en for multilingual base, SmolLM2 for Qwen) cannot
share token ids with the target, but both read and write text. Each round the committed target tokens
are decoded to text and re-encoded with the draft's tokenizer (the draft's ``PrefixCache`` recomputes
only what changed), the draft proposes in its own ids, and its text is re-encoded with the target's
tokenizer. The proposal is deterministic from the target's point of view, so the sampling rule treats
it as one-hot; whatever it proposes, the target decides, so the bridge is lossless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Sequence

from whisper_spec.core.protocols import DraftRequest, Drafter, Proposal

Encode = Callable[[str], list[int]]  # text -> ids, without special tokens
Decode = Callable[[Sequence[int]], str]  # ids -> text, special tokens dropped


@dataclass(frozen=True)
class Tokenization:
    """One side of the bridge: how a model turns text into its ids and back."""

    encode: Encode
    decode: Decode
    stop_ids: frozenset[int]  # ids that end a sequence
    special_ids: frozenset[int]  # ids that carry no text (dropped before decoding)


class TextBridgeDrafter:
    """Wraps a drafter that works in the draft's own ids into one that proposes target ids."""

    def __init__(self, inner: Drafter, draft: Tokenization, target: Tokenization, target_stop_id: int,
                 draft_prompts: Sequence[Sequence[int]], target_prompt_lengths: Sequence[int]):
        """
        Args:
            inner: proposes draft ids after draft sequences (``draft_prompts[row]`` + the generated text).
            draft, target: the two tokenizations.
            target_stop_id: proposed when the draft ends its sequence.
            draft_prompts: per row, the draft's own prompt ids (the same request in its own format).
            target_prompt_lengths: per row, how many leading target ids are prompt, not generated text.
        """
        self.inner = inner
        self.draft = draft
        self.target = target
        self.target_stop_id = target_stop_id
        self.draft_prompts = [list(p) for p in draft_prompts]
        self.target_prompt_lengths = list(target_prompt_lengths)

    def propose(self, request: DraftRequest) -> Proposal:
        rows = request.rows.tolist()
        generated = [list(s[self.target_prompt_lengths[r]:]) for r, s in zip(rows, request.sequences)]
        texts = [self.target.decode(g) for g in generated]
        draft_sequences = [self.draft_prompts[r] + self.draft.encode(t) for r, t in zip(rows, texts)]
        inner = self.inner.propose(DraftRequest(request.rows, draft_sequences, request.k, 0.0, None))
        proposals = [self._to_target(g, t, d, request.k) for g, t, d in zip(generated, texts, inner.tokens)]
        return Proposal(tokens=proposals, forward_calls=inner.forward_calls)

    def _to_target(self, generated: list[int], text: str, draft_ids: list[int], k: int) -> list[int]:
        ends = bool(draft_ids) and draft_ids[-1] in self.draft.stop_ids
        draft_text = self.draft.decode([t for t in draft_ids if t not in self.draft.special_ids])
        # Re-tokenize the whole text so that a word the draft finishes is tokenized as the target would;
        # if that changes the committed ids, fall back to the draft's text alone.
        whole = self.target.encode(text + draft_text)
        if whole[: len(generated)] == generated:
            proposal = whole[len(generated):]
        else:
            proposal = self.target.encode(draft_text)
        if ends and len(proposal) < k:
            proposal.append(self.target_stop_id)
        return proposal[:k]


def tokenization(tokenizer, stop_ids: Collection[int]) -> Tokenization:
    """The ``Tokenization`` of a transformers tokenizer."""
    return Tokenization(
        encode=lambda text: tokenizer.encode(text, add_special_tokens=False),
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        stop_ids=frozenset(stop_ids),
        special_ids=frozenset(tokenizer.all_special_ids))
