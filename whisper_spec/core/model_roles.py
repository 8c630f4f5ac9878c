"""A verifier and a drafter backed by any ``IncrementalModel`` (Whisper decoders, causal LMs alike)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import torch
from torch import Tensor

from whisper_spec.core.draft_length import draft_continues
from whisper_spec.core.prefix_cache import IncrementalModel, PrefixCache
from whisper_spec.core.protocols import Drafter, DraftRequest, Proposal


class LogitRules(Protocol):
    """Position-dependent logit rules (suppressed tokens, timestamp grammar, ...).

    Position i of row r scores the token after ``sequences[r] + drafts[r][:i]``; rules must depend only
    on that prefix, so a k-token verify pass applies exactly what k plain steps would.
    """

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor) -> Tensor:
        """rows [b] batch indices; logits [b, K+1, V] -> [b, K+1, V]."""
        ...


def no_rules(rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
             logits: Tensor) -> Tensor:
    return logits


class Rescorer(Protocol):
    """Exact logits for one prefix, computed the same way whichever path asked (see ``NearTieRule``)."""

    def __call__(self, row: int, prefix: Sequence[int]) -> Tensor:
        """Raw logits [V] (float32, before logit rules) for the token after ``prefix`` in batch row ``row``."""
        ...


class NearTieRule:
    """Keeps half-precision greedy decoding path-independent: near-ties are decided by an exact rescoring.

    In float16/bfloat16 a k-token verify pass and a one-token step round differently, so where the top
    two logits are closer than that rounding the argmax can differ between speculative decoding and the
    same model's plain greedy decoding. Every position whose top-two margin is below ``margin`` is
    rescored by ``rescore`` (float32, the prefix alone, one fixed shape), and its argmax decides. Both
    paths then agree: where a path sees a margin >= ``margin`` and the rounding error is below
    ``margin / 2``, the exact argmax is that path's argmax too, so rescoring or not gives the same token.
    For greedy acceptance only (sampling reads whole distributions): positions after a row's first
    disagreement with its draft are left as they are, since greedy acceptance never reads them.
    """

    def __init__(self, margin: float, rescore: Rescorer):
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin
        self.rescore = rescore
        self.rescored: Counter[int] = Counter()  # per batch row: positions decided by rescoring

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor, rules: LogitRules) -> Tensor:
        """logits [b, K+1, V] after ``rules`` -> float32 [b, K+1, V] with near-tie positions replaced."""
        logits = logits.float()
        top2 = logits.topk(2, dim=-1).values  # [b, K+1, 2]
        close = ((top2[..., 0] - top2[..., 1]) < self.margin).tolist()
        choice = logits.argmax(dim=-1).tolist()
        for i, draft in enumerate(drafts):
            # Greedy acceptance reads positions in order and stops at the first disagreement, whose
            # argmax is the target's own next token; positions after it decide nothing.
            for j in range(len(draft) + 1):
                if close[i][j]:
                    prefix = list(sequences[i]) + list(draft[:j])
                    raw = self.rescore(int(rows[i]), prefix).float().to(logits.device)[None, None]
                    logits[i, j] = rules(rows[i : i + 1], [prefix], [[]], raw)[0, 0]
                    choice[i][j] = int(logits[i, j].argmax())
                    self.rescored[int(rows[i])] += 1
                if j == len(draft) or choice[i][j] != draft[j]:
                    break
        return logits


class ModelVerifier:
    """The target: scores the last committed token and the k draft tokens in one forward pass."""

    def __init__(self, model: IncrementalModel, batch_size: int, rules: LogitRules = no_rules,
                 near_ties: NearTieRule | None = None):
        """``near_ties``: decide near-ties by exact rescoring (half precision; see ``NearTieRule``)."""
        self.cache = PrefixCache(model, batch_size)
        self.rules = rules
        self.near_ties = near_ties

    def score(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]]) -> Tensor:
        extended = [list(s) + list(d) for s, d in zip(sequences, drafts)]
        logits = self.cache.logits(rows, extended, [len(d) + 1 for d in drafts])
        logits = self.rules(rows, sequences, drafts, logits)
        if self.near_ties is not None:
            logits = self.near_ties(rows, sequences, drafts, logits, self.rules)
        return logits


class ModelDrafter:
    """A draft model that shares the target's tokenizer: k autoregressive steps, one token each."""

    def __init__(self, model: IncrementalModel, batch_size: int, rules: LogitRules = no_rules,
                 stop_token_ids: Sequence[int] = (), vocabulary: Tensor | None = None):
        """``vocabulary`` [R] long: the only ids ``model`` scores (-inf elsewhere, e.g. a distilled draft's
        restricted output); choosing among them alone skips full-vocabulary softmax and argmax each step."""
        self.cache = PrefixCache(model, batch_size)
        self.rules = rules
        self.stop_token_ids = frozenset(stop_token_ids)  # a row stops drafting after proposing one of these
        self.vocabulary = vocabulary

    def propose(self, request: DraftRequest) -> Proposal:
        sequences = [list(s) for s in request.sequences]
        drafts: list[list[int]] = [[] for _ in sequences]
        alive = list(range(len(sequences)))
        q_steps: list[tuple[list[int], Tensor]] = []
        calls = 0
        confidence = None  # [len(alive)]
        for _ in range(request.k):
            if not alive:
                break
            prefixes = [sequences[i] + drafts[i] for i in alive]
            logits = self.cache.logits(request.rows[alive], prefixes, [1] * len(alive))
            logits = self.rules(request.rows[alive], prefixes, [[] for _ in alive], logits)[:, 0].float()
            calls += 1
            if self.vocabulary is not None:
                tokens, probs, confidence, going_on = draft_step(logits.index_select(1, self.vocabulary), request,
                                                                 confidence)
                tokens = self.vocabulary[tokens]
                if probs is not None:  # the sampling rule reads distributions over the target's vocabulary
                    probs = logits.new_zeros(logits.shape).index_copy_(1, self.vocabulary, probs)
            else:
                tokens, probs, confidence, going_on = draft_step(logits, request, confidence)
            if probs is not None:
                q_steps.append((list(alive), probs))
            alive, confidence = extend_drafts(drafts, alive, tokens, going_on, self.stop_token_ids, confidence)
        return Proposal(tokens=drafts, forward_calls=calls, q_draft=stack_q(q_steps, drafts) if q_steps else None)


class PrefixHidingDrafter:
    """A drafter that reads each row's committed sequence without a leading part of its prompt.

    For a draft trained without that part (a Whisper draft distilled on prompts without previous text):
    shown it, such a draft proposes worse, and reading it costs a prefill. Logit rules still see whole
    sequences: they count positions from the target's prompt.
    """

    def __init__(self, make_drafter: Callable[[LogitRules], Drafter], rules: LogitRules,
                 hidden: Sequence[Sequence[int]]):
        """
        Args:
            make_drafter: builds the inner drafter from the logit rules it must apply.
            rules: the target's rules, for whole sequences.
            hidden: per batch row, the prompt tokens the inner drafter does not see (may be empty).
        """
        self.hidden = [list(h) for h in hidden]
        self.rules = rules
        self.inner = make_drafter(self._rules)

    def restart(self, row: int, hidden: Sequence[int]) -> None:
        """Row ``row`` starts a new input, of which the inner drafter does not see ``hidden``."""
        self.hidden[row] = list(hidden)

    def _rules(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
               logits: Tensor) -> Tensor:
        return self.rules(rows, [self.hidden[r] + list(s) for r, s in zip(rows.tolist(), sequences)], drafts, logits)

    def propose(self, request: DraftRequest) -> Proposal:
        sequences = [s[len(self.hidden[r]):] for r, s in zip(request.rows.tolist(), request.sequences)]
        return self.inner.propose(replace(request, sequences=sequences))


def draft_step(logits: Tensor, request: DraftRequest,
               confidence: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None, list[bool]]:
    """One draft position for the rows still drafting.

    logits [b, V] (rules applied); ``confidence`` [b]: each row's draft probability of its proposal so
    far (None at the first position). Returns (tokens [b], the distribution they were sampled from
    [b, V] or None when greedy, the updated confidence [b] (None when ``request.min_confidence`` is 0),
    and per row whether its draft goes on: see ``draft_continues``).
    """
    probs = None
    if request.temperature > 0:
        probs = torch.softmax(logits / request.temperature, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=request.generator).squeeze(1)
    else:
        tokens = logits.argmax(dim=-1)
    if request.min_confidence <= 0:
        return tokens, probs, None, [True] * len(tokens)
    q = (probs if probs is not None else torch.softmax(logits, dim=-1)).gather(1, tokens[:, None]).squeeze(1)
    confidence = q if confidence is None else confidence * q
    return tokens, probs, confidence, draft_continues(confidence, request.min_confidence).tolist()


def extend_drafts(drafts: list[list[int]], alive: list[int], tokens: Tensor, going_on: list[bool],
                  stop_token_ids: frozenset[int], confidence: Tensor | None) -> tuple[list[int], Tensor | None]:
    """Append each drafting row's new token (``tokens`` [len(alive)]) to ``drafts``; returns the rows that
    draft on (no stop id proposed, confidence still high enough) and their confidence."""
    kept = []
    for j, (i, token, more) in enumerate(zip(alive, tokens.tolist(), going_on)):
        drafts[i].append(token)
        if token not in stop_token_ids and more:
            kept.append(j)
    return [alive[j] for j in kept], confidence[kept] if confidence is not None else None


def stack_q(q_steps: list[tuple[list[int], Tensor]], drafts: list[list[int]]) -> Tensor:
    """Gather per-step [alive, V] draft distributions into [b, K, V] (zeros past each row's draft)."""
    vocab = q_steps[0][1].shape[-1]
    q = torch.zeros(len(drafts), len(q_steps), vocab, device=q_steps[0][1].device)
    for step, (alive, probs) in enumerate(q_steps):
        q[alive, step] = probs
    return q
