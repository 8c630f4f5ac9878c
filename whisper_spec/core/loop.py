"""The draft/verify loop: one implementation for every model, every draft and every batch size.

Each round has four steps, one function each: ``propose`` (the drafter proposes up to k tokens per
row), ``score`` (the verifier scores all of them in one forward pass), ``accept`` (each row keeps the
longest prefix the acceptance rule allows plus one token of the target's own) and ``commit`` (the tokens
join the sequences, rows that finished leave the batch). Without a drafter (or at k = 0) a round is one
plain decoding step, so the baseline runs through the same code. ``SpeculativeBatch`` holds the rows
between rounds, so new rows may join at any round (continuous batching, as LLM servers do);
``speculative_decode`` is the batch whose rows all start together.
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
    max_new_tokens: int  # this row's budget, its stop token included
    from_draft: list[bool] = field(default_factory=list)
    stopped: bool = False
    stats: SpeculationStats = SpeculationStats()

    @property
    def generated(self) -> int:
        return len(self.sequence) - self.prompt_length

    @property
    def done(self) -> bool:
        return self.stopped or self.generated >= self.max_new_tokens

    def result(self) -> DecodedRow:
        return DecodedRow(tuple(self.sequence[self.prompt_length:]), tuple(self.from_draft), self.stopped, self.stats)


@dataclass(frozen=True)
class _Proposed:
    drafts: list[list[int]]  # per active row, cut to the row's token budget
    proposal: Proposal | None  # None: no draft this round
    seconds: float


class SpeculativeBatch:
    """A batched decode that rows join and leave between rounds (continuous batching).

    Rows are slots ``0 .. capacity - 1`` of the verifier's and drafter's per-row state; a row joins with
    ``add`` (after the adapter has reset that slot's state for its new prompt) and leaves when it stops,
    when its budget is spent or when ``remove`` drops it. Each row's greedy output is the target's own
    whatever joins or leaves beside it: acceptance is per row, and a row's logits depend on its own
    sequence only.
    """

    def __init__(self, verifier: Verifier, drafter: Drafter | None, stop_token_ids: Sequence[int],
                 options: DecodeOptions, controller: DraftLengthPolicy | None = None,
                 device: torch.device | str | None = None):
        """``controller`` chooses k each round; pass one that outlives this batch to carry what it measured
        over to the next (it then also learns from batches without a drafter: their steps are what
        drafting must beat)."""
        self.verifier, self.drafter, self.options = verifier, drafter, options
        self.controller = controller or draft_length_policy(options.draft_length if drafter is not None else 0,
                                                            options.adaptive_draft_length, options.draft_confidence > 0)
        self.generator = None
        if options.temperature > 0 and options.seed is not None:
            self.generator = torch.Generator(device=device or "cpu").manual_seed(options.seed)
        self.stops = frozenset(stop_token_ids)
        self.watch = Stopwatch(device)
        self.rows: dict[int, _Row] = {}  # the rows decoding now, by slot
        self.stats = SpeculationStats()  # every round so far, each forward call counted once
        self.draft_read = DraftRead.PROMPT  # what the draft must read before its next proposal
        self.prompts_pending = True  # a row joined since the last round: the next verify pass reads its prompt

    @property
    def active(self) -> list[int]:
        return sorted(self.rows)

    def add(self, row: int, prompt: Sequence[int], max_new_tokens: int | None = None) -> None:
        """Row ``row`` starts decoding after ``prompt``, for up to ``max_new_tokens`` (default the options')."""
        if row in self.rows:
            raise ValueError(f"row {row} is still decoding")
        budget = self.options.max_new_tokens if max_new_tokens is None else max_new_tokens
        if budget < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {budget}")
        self.rows[row] = _Row(list(prompt), len(prompt), budget)
        self.prompts_pending = True

    def start_drafting(self, drafter: Drafter) -> None:
        """From the next round on, ``drafter`` proposes (it reads every row's sequence so far first)."""
        self.drafter = drafter
        self.draft_read = DraftRead.PROMPT

    def remove(self, row: int) -> DecodedRow:
        """Drop row ``row`` before it finished (its caller gave up on it); returns what it decoded so far."""
        return self.rows.pop(row).result()

    def round(self, on_tokens: TokenCallback | None = None) -> list[tuple[int, DecodedRow]]:
        """One draft/verify round over the active rows; returns the rows it finished, which leave."""
        active = self.active
        rows = torch.tensor(active, dtype=torch.long)
        sequences = [self.rows[r].sequence for r in active]
        # the round also yields one token of the target's own, so a draft may use all but one of the budget
        room = [self.rows[r].max_new_tokens - self.rows[r].generated - 1 for r in active]
        request = DraftRequest(rows, sequences, 0, self.options.temperature, self.generator,
                               self.options.draft_confidence)
        proposed = propose(self.drafter, self.controller, request, room, self.watch)
        with self.watch.phase("verify") as verify:
            logits = self.verifier.score(rows, sequences, proposed.drafts)
        n_accepted, next_tokens = accept(logits, proposed, self.options.temperature, self.generator)
        self.controller.observe(commit(self, active, proposed, n_accepted, next_tokens, verify.seconds, on_tokens))
        finished = [r for r in active if self.rows[r].done]
        return [(r, self.rows.pop(r).result()) for r in finished]

    def finish(self, draft_setup_seconds: float = 0.0) -> None:
        """Tell the controller what starting the drafter cost these rounds (all of its start: a separate
        encoder, cross-attention keys and values), which it spreads over the rounds it served."""
        if self.drafter is not None:
            self.controller.observe_decode(setup_seconds=draft_setup_seconds, rounds=self.stats.rounds)


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
    """Decode every prompt (row i: ``prompts[i]``) to a stop token or ``max_new_tokens``; greedy output
    equals the target's own. A ``SpeculativeBatch`` whose rows all join at the start; see it for
    ``controller`` and ``SpeculativeBatch.finish`` for ``draft_setup_seconds``."""
    batch = SpeculativeBatch(verifier, drafter, stop_token_ids, options, controller, device)
    for row, prompt in enumerate(prompts):
        batch.add(row, prompt)
    done: dict[int, DecodedRow] = {}
    while batch.rows:
        done.update(batch.round(on_tokens))
    batch.finish(draft_setup_seconds)
    return DecodeResult(tuple(done[row] for row in range(len(prompts))), batch.stats)


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


def commit(batch: SpeculativeBatch, active: list[int], proposed: _Proposed, n_accepted: list[int],
           next_tokens: list[int], verify_seconds: float, on_tokens: TokenCallback | None) -> RoundReport:
    """Append each active row's accepted tokens and the target's own, and count the round."""
    draft_calls = proposed.proposal.forward_calls if proposed.proposal is not None else 0
    width = max(len(d) for d in proposed.drafts)
    rejections = 0
    for r, draft, n, token in zip(active, proposed.drafts, n_accepted, next_tokens):
        row = batch.rows[r]
        new_tokens = draft[:n] + [token]
        stop = next((j for j, t in enumerate(new_tokens) if t in batch.stops), None)
        if stop is not None:
            new_tokens, row.stopped = new_tokens[: stop + 1], True
        new_tokens = new_tokens[: row.max_new_tokens - row.generated]
        row.from_draft.extend(j < n for j in range(len(new_tokens)))
        row.sequence.extend(new_tokens)
        row.stats += SpeculationStats(tokens=len(new_tokens), rounds=1, drafted=len(draft), accepted=n,
                                      target_calls=1, draft_calls=draft_calls, draft_seconds=proposed.seconds,
                                      verify_seconds=verify_seconds, accepted_lengths=((n, 1),) if draft else ())
        batch.stats += SpeculationStats(tokens=len(new_tokens), drafted=len(draft), accepted=n,
                                        accepted_lengths=((n, 1),) if draft else ())
        rejections += int(n < len(draft))
        if on_tokens is not None:
            on_tokens(r, new_tokens)
    report = RoundReport(k=width, accepted=sum(n_accepted), rejections=rejections, rows=len(active),
                         draft_seconds=proposed.seconds, verify_seconds=verify_seconds,
                         target_read_prompt=batch.prompts_pending, draft_read=batch.draft_read)
    batch.stats += SpeculationStats(rounds=1, target_calls=1, draft_calls=draft_calls,
                                    draft_seconds=proposed.seconds, verify_seconds=verify_seconds)
    batch.prompts_pending = False
    if width > 0:
        batch.draft_read = DraftRead.STEADY
    elif batch.draft_read is DraftRead.STEADY:
        batch.draft_read = DraftRead.CATCH_UP
    return report


def _draft_distribution(proposal: Proposal | None, draft_tokens: Tensor, vocab_size: int) -> Tensor:
    """[b, K, V] q_draft in the target's vocabulary: the drafter's own, or one-hot for fixed proposals."""
    if proposal is None or proposal.q_draft is None:
        return F.one_hot(draft_tokens, vocab_size).float()
    q = proposal.q_draft[:, : draft_tokens.shape[1]].float()
    if q.shape[-1] < vocab_size:  # a draft head with fewer output ids than the target's embedding rows
        q = F.pad(q, (0, vocab_size - q.shape[-1]))
    return q[..., :vocab_size].to(draft_tokens.device)
