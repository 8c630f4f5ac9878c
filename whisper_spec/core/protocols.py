"""The two roles of speculative decoding, as small protocols the decoding loop talks to.

A *verifier* is the target model: given each row's committed sequence and a draft, it scores every
draft position in one forward pass. A *drafter* proposes up to k tokens after each row's committed
sequence. Both see only token ids; what the tokens mean (audio, text) is the adapters' business.

Both receive the full committed sequences each call and keep whatever cache they like in sync with
them: the committed sequence only ever grows by accepted tokens, so an adapter keeps the longest common
prefix of what it cached and recomputes the rest (see ``core.prefix_cache``). Rows are addressed by
their index in the batch the decode started with (``rows``), so adapters can keep per-row state while
finished rows leave the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class DraftRequest:
    """What the loop asks of a drafter in one round."""

    rows: Tensor  # [b] long: batch indices of the rows still decoding
    sequences: Sequence[Sequence[int]]  # b committed sequences (prompt + generated), in target ids
    k: int  # the most tokens to propose per row
    temperature: float  # 0: propose greedily; > 0: sample from the draft's own distribution
    generator: torch.Generator | None  # for sampling drafters
    # A model drafter stops a row after a token it gave less than this probability (0: never), so that
    # k is only a cap: long drafts where the draft is sure, short ones where it guesses.
    min_confidence: float = 0.0


@dataclass(frozen=True)
class Proposal:
    """A drafter's answer: up to k target-vocabulary token ids per row."""

    tokens: list[list[int]]  # b lists, each of length 0..k
    forward_calls: int  # draft model forward passes spent (0 for model-free drafters)
    # [b, K, V] the draft distribution each token was sampled from, in the TARGET's vocabulary; None for
    # deterministic proposals (the sampling rule then treats them as one-hot).
    q_draft: Tensor | None = None


class Drafter(Protocol):
    def propose(self, request: DraftRequest) -> Proposal: ...


class Verifier(Protocol):
    """The target model."""

    def score(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]]) -> Tensor:
        """Logits after each row's sequence and after each of its draft tokens, in ONE forward pass.

        Returns [b, K+1, V] with K = the longest draft; position i of row r scores the token that follows
        ``sequences[r] + drafts[r][:i]``, with every logit rule of the target's own greedy decoding applied
        (suppressed tokens etc.), so that argmax equals the target's plain greedy choice. Positions past
        a row's own draft are padding.
        """
        ...
