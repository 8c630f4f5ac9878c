"""The draft/verify loop: one implementation for every model, every draft and every batch size.

Each round: the drafter proposes up to k tokens per row, the verifier scores all of them in one
forward pass, each row keeps the longest prefix the acceptance rule allows plus one token of the
target's own, and rows that finished leave the batch. Without a drafter (or at k = 0) a round is one
plain decoding step, so the baseline runs through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from whisper_spec.core.acceptance import greedy_accept, speculative_sampling_accept
from whisper_spec.core.draft_length import DraftLengthController
from whisper_spec.core.protocols import DraftRequest, Drafter, Verifier
from whisper_spec.core.stats import SpeculationStats, Stopwatch


@dataclass(frozen=True)
class DecodeOptions:
    max_new_tokens: int  # tokens generated per row, the stop token included
    draft_length: int = 6  # k, or the largest k when adaptive
    adaptive_draft_length: bool = True  # choose k each round from measured acceptance and costs
    # a model draft ends its proposal after a token it gave less than this probability (0: never)
    draft_confidence: float = 0.0
    temperature: float = 0.0  # 0: greedy (exact-match acceptance); > 0: rejection sampling
    seed: int | None = None  # for sampling; None draws fresh randomness (reproducible with a fixed draft length)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.draft_length < 0:
            raise ValueError(f"draft_length must be >= 0, got {self.draft_length}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 <= self.draft_confidence < 1.0:
            raise ValueError(f"draft_confidence must be in [0, 1), got {self.draft_confidence}")


@dataclass(frozen=True)
class DecodedRow:
    tokens: tuple[int, ...]  # generated ids, prompt excluded, stop token included when reached
    from_draft: tuple[bool, ...]  # per token: True = an accepted draft token, False = the target's own
    stopped: bool  # True: a stop token ended the row; False: max_new_tokens did
    stats: SpeculationStats  # counts for this row (a batched call counts once for every row it served)


@dataclass(frozen=True)
class DecodeResult:
    rows: tuple[DecodedRow, ...]
    stats: SpeculationStats  # the whole batch: every forward call counted once


TokenCallback = Callable[[int, list[int]], None]  # (row, newly committed tokens)


@dataclass
class _RowState:
    sequence: list[int]
    prompt_length: int
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    stopped: bool = False
    histogram: dict | None = None
    from_draft: list[bool] | None = None

    @property
    def generated(self) -> int:
        return len(self.sequence) - self.prompt_length


def speculative_decode(
    verifier: Verifier,
    drafter: Drafter | None,
    prompts: Sequence[Sequence[int]],
    stop_token_ids: Sequence[int],
    options: DecodeOptions,
    on_tokens: TokenCallback | None = None,
    device: torch.device | str | None = None,
    controller: DraftLengthController | None = None,
    draft_setup_seconds: float = 0.0,
) -> DecodeResult:
    """Decode every prompt to a stop token or ``max_new_tokens``; greedy output equals the target's own.

    ``controller`` chooses k each round; pass one that outlives this call to carry what it measured
    over to the next decode (it then also learns from decodes without a drafter: their steps are what
    drafting must beat). ``draft_setup_seconds`` is what starting ``drafter`` for this decode cost
    (all of its start: a separate encoder, cross-attention keys and values), which the controller spreads
    over the rounds it serves.
    """
    stops = frozenset(stop_token_ids)
    states = [_RowState(list(p), len(p), histogram={}, from_draft=[]) for p in prompts]
    active = list(range(len(states)))
    if controller is None:
        controller = DraftLengthController(options.draft_length if drafter is not None else 0,
                                           adaptive=options.adaptive_draft_length,
                                           gated=options.draft_confidence > 0)
    generator = None
    if options.temperature > 0 and options.seed is not None:
        generator = torch.Generator(device=device or "cpu").manual_seed(options.seed)
    watch = Stopwatch(device)
    total_rounds = total_drafted = total_accepted = total_target = total_draft_calls = 0
    drafted_last_round = False  # else the draft must first read what was committed without it
    draft_started = False  # until its first round, the draft has not read the prompt

    while active:
        rows = torch.tensor(active, dtype=torch.long)
        sequences = [states[r].sequence for r in active]
        # the round also yields one token of the target's own, so a draft may use all but one of the budget
        room = [options.max_new_tokens - states[r].generated - 1 for r in active]
        if drafter is not None:
            k = min(controller.next_k(), max(room))
        else:
            k = 0
            controller.count_undrafted_round()
        proposal = None
        draft_seconds = 0.0
        if k > 0 and drafter is not None:
            before = watch.seconds["draft"]
            with watch.phase("draft"):
                proposal = drafter.propose(DraftRequest(rows, sequences, k, options.temperature, generator,
                                                           options.draft_confidence))
            draft_seconds = watch.seconds["draft"] - before
            drafts = [list(t[: max(0, min(k, r))]) for t, r in zip(proposal.tokens, room)]
        else:
            drafts = [[] for _ in active]
        before = watch.seconds["verify"]
        with watch.phase("verify"):
            logits = verifier.score(rows, sequences, drafts)
        verify_seconds = watch.seconds["verify"] - before

        width = max(len(d) for d in drafts)
        draft_tokens = torch.zeros((len(active), width), dtype=torch.long, device=logits.device)
        for i, d in enumerate(drafts):
            draft_tokens[i, : len(d)] = torch.tensor(d, dtype=torch.long)
        lengths = torch.tensor([len(d) for d in drafts], device=logits.device)
        if options.temperature == 0:
            n_accepted, next_token = greedy_accept(draft_tokens, logits.argmax(dim=-1), lengths)
        else:
            p_target = torch.softmax(logits.float() / options.temperature, dim=-1)
            q_draft = _draft_distribution(proposal, draft_tokens, p_target.shape[-1])
            n_accepted, next_token = speculative_sampling_accept(p_target, q_draft, draft_tokens, lengths, generator)
        # one host synchronisation per round
        accepted_list, next_list = n_accepted.tolist(), next_token.tolist()

        draft_calls = proposal.forward_calls if proposal is not None else 0
        total_rounds += 1
        total_target += 1
        total_draft_calls += draft_calls
        rejections = 0
        still_active = []
        for r, draft, n, token in zip(active, drafts, accepted_list, next_list):
            state = states[r]
            new_tokens = draft[:n] + [token]
            for j, t in enumerate(new_tokens):
                if t in stops:
                    new_tokens = new_tokens[: j + 1]
                    state.stopped = True
                    break
            new_tokens = new_tokens[: options.max_new_tokens - state.generated]
            state.from_draft.extend(j < n for j in range(len(new_tokens)))
            state.sequence.extend(new_tokens)
            state.rounds += 1
            state.drafted += len(draft)
            state.accepted += n
            state.target_calls += 1
            state.draft_calls += draft_calls
            state.draft_seconds += draft_seconds
            state.verify_seconds += verify_seconds
            if draft:
                state.histogram[n] = state.histogram.get(n, 0) + 1
            rejections += int(n < len(draft))
            total_drafted += len(draft)
            total_accepted += n
            if on_tokens is not None:
                on_tokens(r, new_tokens)
            if not state.stopped and state.generated < options.max_new_tokens:
                still_active.append(r)
        controller.observe(k=width, accepted=sum(accepted_list), rejections=rejections,
                           draft_seconds=draft_seconds, verify_seconds=verify_seconds,
                           verify_prefilled=total_rounds == 1, draft_caught_up=not drafted_last_round,
                           draft_prefilled=width > 0 and not draft_started, rows=len(active))
        drafted_last_round = width > 0
        draft_started = draft_started or width > 0
        active = still_active
    if drafter is not None:
        controller.observe_decode(setup_seconds=draft_setup_seconds, rounds=total_rounds)

    rows_out = tuple(
        DecodedRow(
            tokens=tuple(s.sequence[s.prompt_length:]),
            from_draft=tuple(s.from_draft),
            stopped=s.stopped,
            stats=SpeculationStats(
                tokens=s.generated, rounds=s.rounds, drafted=s.drafted, accepted=s.accepted,
                target_calls=s.target_calls, draft_calls=s.draft_calls, draft_seconds=s.draft_seconds,
                verify_seconds=s.verify_seconds, accepted_lengths=tuple(sorted(s.histogram.items()))),
        )
        for s in states)
    histogram: dict[int, int] = {}
    for s in states:
        for n, c in s.histogram.items():
            histogram[n] = histogram.get(n, 0) + c
    total = SpeculationStats(
        tokens=sum(s.generated for s in states), rounds=total_rounds, drafted=total_drafted,
        accepted=total_accepted, target_calls=total_target, draft_calls=total_draft_calls,
        draft_seconds=watch.seconds["draft"], verify_seconds=watch.seconds["verify"],
        accepted_lengths=tuple(sorted(histogram.items())))
    return DecodeResult(rows=rows_out, stats=total)


def _draft_distribution(proposal, draft_tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[b, K, V] q_draft in the target's vocabulary: the drafter's own, or one-hot for fixed proposals."""
    if proposal is None or proposal.q_draft is None:
        return F.one_hot(draft_tokens, vocab_size).float()
    q = proposal.q_draft[:, : draft_tokens.shape[1]].float()
    if q.shape[-1] < vocab_size:  # a draft head with fewer output ids than the target's embedding rows
        q = F.pad(q, (0, vocab_size - q.shape[-1]))
    return q[..., :vocab_size].to(draft_tokens.device)
