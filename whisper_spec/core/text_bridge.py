"""Drafting across tokenizers through text: target ids -> text -> draft ids, and the draft's answer back.

A draft model with another tokenizer (Whisper tiny.en for multilingual base, SmolLM2 for Qwen) cannot
share token ids with the target, but both read and write text. Each round the committed target tokens
are decoded to text and re-encoded with the draft's tokenizer (the draft's ``PrefixCache`` recomputes
only what changed), the draft proposes in its own ids, and its text is re-encoded with the target's
tokenizer. The proposal is deterministic from the target's point of view, so the sampling rule treats
it as one-hot; whatever it proposes, the target decides, so the bridge is lossless.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from whisper_spec.core.protocols import Drafter, DraftRequest, Proposal

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
                 draft_prompts: Sequence[Sequence[int]], target_prompt_lengths: Sequence[int],
                 shared_ids: Mapping[int, int] | None = None):
        """
        Args:
            inner: proposes draft ids after draft sequences (``draft_prompts[row]`` + the generated text).
            draft, target: the two tokenizations.
            target_stop_id: proposed when the draft ends its sequence.
            draft_prompts: per row, the draft's own prompt ids (the same request in its own format).
            target_prompt_lengths: per row, how many leading target ids are prompt, not generated text.
            shared_ids: target id -> draft id for tokens both vocabularies have but that carry no text
                (Whisper's timestamps): they cross one to one, and text is re-tokenized between them.
        """
        self.inner = inner
        self.draft = draft
        self.target = target
        self.target_stop_id = target_stop_id
        self.draft_prompts = [list(p) for p in draft_prompts]
        self.target_prompt_lengths = list(target_prompt_lengths)
        self.to_draft = dict(shared_ids or {})
        self.to_target = {d: t for t, d in self.to_draft.items()}

    def restart(self, row: int, draft_prompt: Sequence[int], target_prompt_length: int) -> None:
        """Row ``row`` starts a new request: the draft's prompt for it, and the target's prompt length."""
        self.draft_prompts[row] = list(draft_prompt)
        self.target_prompt_lengths[row] = target_prompt_length

    def propose(self, request: DraftRequest) -> Proposal:
        rows = request.rows.tolist()
        generated = [list(s[self.target_prompt_lengths[r]:]) for r, s in zip(rows, request.sequences)]
        draft_sequences = [self.draft_prompts[r] + self._translate(g, self.to_draft, self.target, self.draft)
                           for r, g in zip(rows, generated)]
        # the bridge proposes deterministically (one-hot), so the inner draft runs greedily
        inner = self.inner.propose(replace(request, sequences=draft_sequences, temperature=0.0, generator=None))
        proposals = [self._to_target(g, d, request.k) for g, d in zip(generated, inner.tokens)]
        return Proposal(tokens=proposals, forward_calls=inner.forward_calls)

    @staticmethod
    def _runs(ids: Sequence[int], shared: Mapping[int, int]) -> list[tuple[bool, list[int]]]:
        """Split ids into runs: (True, [shared id]) one at a time, (False, text ids) between them."""
        runs: list[tuple[bool, list[int]]] = []
        for token in ids:
            if token in shared:
                runs.append((True, [token]))
            elif runs and not runs[-1][0]:
                runs[-1][1].append(token)
            else:
                runs.append((False, [token]))
        return runs

    def _translate(self, ids: Sequence[int], shared: Mapping[int, int], source: Tokenization,
                   destination: Tokenization) -> list[int]:
        out: list[int] = []
        for is_shared, run in self._runs(ids, shared):
            out += [shared[run[0]]] if is_shared else destination.encode(source.decode(run))
        return out

    def _to_target(self, generated: list[int], draft_ids: list[int], k: int) -> list[int]:
        ends = bool(draft_ids) and draft_ids[-1] in self.draft.stop_ids
        kept = [t for t in draft_ids if t in self.to_target or t not in self.draft.special_ids]
        runs = self._runs(kept, self.to_target)
        # the committed text since the last shared token: the draft may be finishing one of its words
        tail = self._runs(generated, self.to_draft)[-1:] if generated else []
        tail_ids = tail[0][1] if tail and not tail[0][0] else []
        proposal: list[int] = []
        for index, (is_shared, run) in enumerate(runs):
            if is_shared:
                proposal.append(self.to_target[run[0]])
                continue
            draft_text = self.draft.decode(run)
            if index == 0 and tail_ids:
                # Re-tokenize the tail and the draft together so that a word the draft finishes is
                # tokenized as the target would; if that changes committed ids, take the draft's text alone.
                whole = self.target.encode(self.target.decode(tail_ids) + draft_text)
                if whole[: len(tail_ids)] == tail_ids:
                    proposal += whole[len(tail_ids):]
                    continue
            proposal += self.target.encode(draft_text)
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
