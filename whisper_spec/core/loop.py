"""The draft/verify loop: one implementation for every model, every draft and every batch size.

Each round has four steps, one function each: ``propose`` (the drafter proposes up to k tokens per
row), ``score`` (the verifier scores all of them in one forward pass), ``accept`` (each row keeps the
longest prefix the acceptance rule allows plus one token of the target's own) and ``commit`` (the tokens
join the sequences, rows that finished leave the batch). Without a drafter (or at k = 0) a round is one
plain decoding step, so the baseline runs through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from whisper_spec.core.acceptance import greedy_accept, speculative_sampling_accept
from whisper_spec.core.draft_length import DraftLengthPolicy, DraftRead, RoundReport, draft_length_policy
from whisper_spec.core.protocols import Drafter, DraftRequest, Proposal, Verifier
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
class _Row:
    sequence: list[int]
    prompt_length: int
    from_draft: list[bool] = field(default_factory=list)
    stopped: bool = False
    stats: SpeculationStats = SpeculationStats()

    @property
    def generated(self) -> int:
        return len(self.sequence) - self.prompt_length


@dataclass
class _Decode:
    """Everything a decode keeps between rounds."""

    rows: list[_Row]
    active: list[int]  # indices of the rows still decoding
    watch: Stopwatch
    generator: torch.Generator | None
    stats: SpeculationStats = SpeculationStats()  # the whole batch so far
    draft_read: DraftRead = DraftRead.PROMPT  # what the draft must read before its next proposal


@dataclass(frozen=True)
class _Proposed:
    drafts: list[list[int]]  # per active row, cut to the row's token budget
    proposal: Proposal | None  # None: no draft this round
    seconds: float


def speculative_decode(
    verifier: Verifier,
    drafter: Drafter | None,
    prompts: Sequence[Sequence[int]],
    stop_token_ids: Sequence[int],
    options: DecodeOptions,
    on_tokens: TokenCallback | None = None,
    device: torch.device | str | None = None,
    controller: DraftLengthPolicy | None = None,
    draft_setup_seconds: float = 0.0,
) -> DecodeResult:
    """Decode every prompt to a stop token or ``max_new_tokens``; greedy output equals the target's own.

    ``controller`` chooses k each round; pass one that outlives this call to carry what it measured over
    to the next decode (it then also learns from decodes without a drafter: their steps are what drafting
    must beat). ``draft_setup_seconds`` is what starting ``drafter`` for this decode cost (all of its
    start: a separate encoder, cross-attention keys and values), which the controller spreads over the
    rounds it serves.
    """
    if controller is None:
        controller = draft_length_policy(options.draft_length if drafter is not None else 0,
                                         options.adaptive_draft_length, options.draft_confidence > 0)
    generator = None
    if options.temperature > 0 and options.seed is not None:
        generator = torch.Generator(device=device or "cpu").manual_seed(options.seed)
    decode = _Decode([_Row(list(p), len(p)) for p in prompts], list(range(len(prompts))), Stopwatch(device),
                     generator)
    stops = frozenset(stop_token_ids)
    while decode.active:
        rows = torch.tensor(decode.active, dtype=torch.long)
        sequences = [decode.rows[r].sequence for r in decode.active]
        # the round also yields one token of the target's own, so a draft may use all but one of the budget
        room = [options.max_new_tokens - decode.rows[r].generated - 1 for r in decode.active]
        proposed = propose(drafter, controller, DraftRequest(rows, sequences, 0, options.temperature,
                                                             decode.generator, options.draft_confidence),
                           room, decode.watch)
        with decode.watch.phase("verify") as verify:
            logits = verifier.score(rows, sequences, proposed.drafts)
        n_accepted, next_tokens = accept(logits, proposed, options.temperature, decode.generator)
        controller.observe(commit(decode, proposed, n_accepted, next_tokens, verify.seconds, stops, options,
                                  on_tokens))
    if drafter is not None:
        controller.observe_decode(setup_seconds=draft_setup_seconds, rounds=decode.stats.rounds)
    rows = tuple(DecodedRow(tuple(r.sequence[r.prompt_length:]), tuple(r.from_draft), r.stopped, r.stats)
                 for r in decode.rows)
    return DecodeResult(rows, decode.stats)


def propose(drafter: Drafter | None, controller: DraftLengthPolicy, request: DraftRequest, room: list[int],
            watch: Stopwatch) -> _Proposed:
    """The round's drafts: up to k tokens per row of ``request`` (whose k the controller sets), each cut to
    the ``room`` its row has left."""
    if drafter is None:
        controller.count_undrafted_round()
        k = 0
    else:
        k = min(controller.next_k(), max(room))
    if k <= 0:
        return _Proposed([[] for _ in request.sequences], None, 0.0)
    with watch.phase("draft") as phase:
        proposal = drafter.propose(replace(request, k=k))
    drafts = [list(tokens[: max(0, min(k, r))]) for tokens, r in zip(proposal.tokens, room)]
    return _Proposed(drafts, proposal, phase.seconds)


def accept(logits: Tensor, proposed: _Proposed, temperature: float,
           generator: torch.Generator | None) -> tuple[list[int], list[int]]:
    """Per active row: how many draft tokens the acceptance rule keeps, and the target's token after them.

    logits [b, K+1, V] from the verifier. Greedy decoding keeps the longest prefix equal to the target's
    argmax; sampling runs Leviathan et al.'s rejection rule. Reading the answer back waits for the
    device, as the stopwatch does around the draft and verify phases to time them (on a GPU, the
    drafter's own reads of its tokens wait too; a round drafter reads a whole round's at once).
    """
    drafts = proposed.drafts
    draft_tokens = torch.zeros((len(drafts), max(len(d) for d in drafts)), dtype=torch.long, device=logits.device)
    for i, d in enumerate(drafts):
        draft_tokens[i, : len(d)] = torch.tensor(d, dtype=torch.long)
    lengths = torch.tensor([len(d) for d in drafts], device=logits.device)
    if temperature == 0:
        n_accepted, next_token = greedy_accept(draft_tokens, logits.argmax(dim=-1), lengths)
    else:
        p_target = torch.softmax(logits.float() / temperature, dim=-1)
        q_draft = _draft_distribution(proposed.proposal, draft_tokens, p_target.shape[-1])
        n_accepted, next_token = speculative_sampling_accept(p_target, q_draft, draft_tokens, lengths, generator)
    return n_accepted.tolist(), next_token.tolist()


def commit(decode: _Decode, proposed: _Proposed, n_accepted: list[int], next_tokens: list[int],
           verify_seconds: float, stops: frozenset[int], options: DecodeOptions,
           on_tokens: TokenCallback | None) -> RoundReport:
    """Append each row's accepted tokens and the target's own, count the round, drop finished rows."""
    draft_calls = proposed.proposal.forward_calls if proposed.proposal is not None else 0
    width = max(len(d) for d in proposed.drafts)
    served, still_active, rejections = len(decode.active), [], 0
    for r, draft, n, token in zip(decode.active, proposed.drafts, n_accepted, next_tokens):
        row = decode.rows[r]
        new_tokens = draft[:n] + [token]
        stop = next((j for j, t in enumerate(new_tokens) if t in stops), None)
        if stop is not None:
            new_tokens, row.stopped = new_tokens[: stop + 1], True
        new_tokens = new_tokens[: options.max_new_tokens - row.generated]
        row.from_draft.extend(j < n for j in range(len(new_tokens)))
        row.sequence.extend(new_tokens)
        row.stats += SpeculationStats(tokens=len(new_tokens), rounds=1, drafted=len(draft), accepted=n,
                                      target_calls=1, draft_calls=draft_calls, draft_seconds=proposed.seconds,
                                      verify_seconds=verify_seconds, accepted_lengths=((n, 1),) if draft else ())
        decode.stats += SpeculationStats(tokens=len(new_tokens), drafted=len(draft), accepted=n,
                                         accepted_lengths=((n, 1),) if draft else ())
        rejections += int(n < len(draft))
        if on_tokens is not None:
            on_tokens(r, new_tokens)
        if not row.stopped and row.generated < options.max_new_tokens:
            still_active.append(r)
    report = RoundReport(k=width, accepted=sum(n_accepted), rejections=rejections, rows=served,
                         draft_seconds=proposed.seconds, verify_seconds=verify_seconds,
                         target_read_prompt=decode.stats.rounds == 0, draft_read=decode.draft_read)
    decode.stats += SpeculationStats(rounds=1, target_calls=1, draft_calls=draft_calls,
                                     draft_seconds=proposed.seconds, verify_seconds=verify_seconds)
    if width > 0:
        decode.draft_read = DraftRead.STEADY
    elif decode.draft_read is DraftRead.STEADY:
        decode.draft_read = DraftRead.CATCH_UP
    decode.active = still_active
    return report


def _draft_distribution(proposal: Proposal | None, draft_tokens: Tensor, vocab_size: int) -> Tensor:
    """[b, K, V] q_draft in the target's vocabulary: the drafter's own, or one-hot for fixed proposals."""
    if proposal is None or proposal.q_draft is None:
        return F.one_hot(draft_tokens, vocab_size).float()
    q = proposal.q_draft[:, : draft_tokens.shape[1]].float()
    if q.shape[-1] < vocab_size:  # a draft head with fewer output ids than the target's embedding rows
        q = F.pad(q, (0, vocab_size - q.shape[-1]))
    return q[..., :vocab_size].to(draft_tokens.device)
