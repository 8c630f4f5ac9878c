"""A verifier and a drafter backed by any ``IncrementalModel`` (Whisper decoders, causal LMs alike)."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

from whisper_spec.core.prefix_cache import IncrementalModel, PrefixCache
from whisper_spec.core.protocols import DraftRequest, Proposal


class LogitRules(Protocol):
    """Position-dependent logit rules (suppressed tokens, timestamp grammar, ...).

    Position i of row r scores the token after ``sequences[r] + drafts[r][:i]``; rules must depend only
    on that prefix, so a k-token verify pass applies exactly what k plain steps would.
    """

    def __call__(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]],
                 logits: Tensor) -> Tensor:
        """rows [b] batch indices; logits [b, K+1, V] -> [b, K+1, V]."""
        ...


def no_rules(rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]], logits: Tensor) -> Tensor:
    return logits


class ModelVerifier:
    """The target: scores the last committed token and the k draft tokens in one forward pass."""

    def __init__(self, model: IncrementalModel, batch_size: int, vocab_size: int, rules: LogitRules = no_rules):
        self.cache = PrefixCache(model, batch_size)
        self.rules = rules
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def score(self, rows: Tensor, sequences: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]]) -> Tensor:
        extended = [list(s) + list(d) for s, d in zip(sequences, drafts)]
        logits = self.cache.logits(rows, extended, [len(d) + 1 for d in drafts])
        return self.rules(rows, sequences, drafts, logits)


class ModelDrafter:
    """A draft model that shares the target's tokenizer: k autoregressive steps, one token each."""

    def __init__(self, model: IncrementalModel, batch_size: int, rules: LogitRules = no_rules,
                 stop_token_ids: Sequence[int] = ()):
        self.cache = PrefixCache(model, batch_size)
        self.rules = rules
        self.stop_token_ids = frozenset(stop_token_ids)  # a row stops drafting after proposing one of these

    def propose(self, request: DraftRequest) -> Proposal:
        sequences = [list(s) for s in request.sequences]
        drafts: list[list[int]] = [[] for _ in sequences]
        alive = list(range(len(sequences)))
        q_steps: list[tuple[list[int], Tensor]] = []
        calls = 0
        for _ in range(request.k):
            if not alive:
                break
            prefixes = [sequences[i] + drafts[i] for i in alive]
            logits = self.cache.logits(request.rows[alive], prefixes, [1] * len(alive))
            logits = self.rules(request.rows[alive], prefixes, [[] for _ in alive], logits)[:, 0].float()
            calls += 1
            if request.temperature > 0:
                probs = torch.softmax(logits / request.temperature, dim=-1)
                tokens = torch.multinomial(probs, 1, generator=request.generator).squeeze(1)
                q_steps.append((list(alive), probs))
            else:
                tokens = logits.argmax(dim=-1)
            for i, token in zip(list(alive), tokens.tolist()):
                drafts[i].append(token)
                if token in self.stop_token_ids:
                    alive.remove(i)
        return Proposal(tokens=drafts, forward_calls=calls, q_draft=_stack_q(q_steps, drafts) if q_steps else None)


def _stack_q(q_steps: list[tuple[list[int], Tensor]], drafts: list[list[int]]) -> Tensor:
    """Gather per-step [alive, V] draft distributions into [b, K, V] (zeros past each row's draft)."""
    vocab = q_steps[0][1].shape[-1]
    q = torch.zeros(len(drafts), len(q_steps), vocab, device=q_steps[0][1].device)
    for step, (alive, probs) in enumerate(q_steps):
        q[alive, step] = probs
    return q
