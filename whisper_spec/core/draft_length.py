"""How many tokens to draft next round: three policies, one report of each round to learn from.

- ``FixedDraftLength``: always k (``adaptive_draft_length=False``).
- ``AdaptiveDraftLength``: the k with the most expected tokens per second. A round with draft length k
  produces ``expected_accepted_tokens(alpha, k)`` tokens and costs ``k * t_draft + t_verify + t_setup / R``
  (k >= 1) or one plain target step ``t_step`` (k = 0). ``t_setup`` is what a draft costs before its
  first token of a decode (its own encoder, cross-attention keys and values), shared by the ``R`` rounds
  of that decode. All of these are measured while decoding, so the rule adapts to the machine: on a GPU
  a verify pass costs about one step, on a 2-core CPU it can cost twice that.
- ``DraftSwitch``: for a draft that ends its own rounds (``draft_continues``), only on or off. Once the
  probability the draft gives its whole proposal so far falls below a threshold, its next tokens are
  unlikely to be reached, so k is only a cap: such a draft drafts long where it is sure and short where
  it is not (dynamic lookahead: Mamou et al. 2024 stop on a single token's probability, as transformers'
  assisted generation does; the product also counts a run of merely likely tokens, measured better
  here). The geometric model above then no longer describes a round, so the switch compares measured
  rates instead: tokens committed per second over the last drafting rounds against the median of the
  last plain steps, taking one plain step every ``window`` rounds to keep that price current.

k = 0 is plain greedy decoding; a collapsed acceptance therefore costs nearly nothing. While drafting is
off, both adaptive policies still try it now and then (``ProbeSchedule``), each failed probe doubling
the wait before the next, so a useless draft costs less and less. A policy can outlive one decode (an
engine keeps its own in a ``ControllerMemory``), so that what one window or prompt taught is not
relearned, at a loss, by the next. Why each guard exists, with the measurements that called for it:
evaluation/results/draft-length-controller.md.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from torch import Tensor

from whisper_spec.core.acceptance import expected_accepted_tokens


def draft_continues(q_proposal: Tensor, min_confidence: float) -> Tensor:
    """Whether each row's draft goes on after its newest token.

    q_proposal [b]: the draft's own probability of its proposal so far, prod_i q(x_i). A row stops
    once it falls below ``min_confidence`` (the newest token is still proposed: verifying one more
    position costs little). Stopping depends on the draft alone, so it keeps greedy and sampled
    decoding lossless.
    """
    return q_proposal >= min_confidence


class DraftRead(Enum):
    """What the draft read in a round before it could draft: only steady rounds price a draft position."""

    STEADY = "steady"  # it drafted the round before too: only the tokens that round committed
    CATCH_UP = "catch-up"  # everything committed while it was off (plain steps in between)
    PROMPT = "prompt"  # its first round of the decode: the whole prompt


@dataclass(frozen=True)
class RoundReport:
    """One round as a draft-length policy learns from it; counts are summed over the batch's rows."""

    k: int  # the longest draft of the round (0: a plain step)
    accepted: int  # draft tokens the target agreed with
    # rows whose draft a disagreement cut short: a row that accepted n of its k tokens saw n successes and
    # one failure (or k successes, censored), so accepted / (accepted + rejections) estimates alpha
    rejections: int
    rows: int  # rows the round served (each also committed one token of the target's own)
    draft_seconds: float
    verify_seconds: float
    target_read_prompt: bool = False  # a decode's first round: the target call also read the prompt
    draft_read: DraftRead = DraftRead.STEADY

    @property
    def committed(self) -> int:
        return self.accepted + self.rows

    @property
    def seconds(self) -> float:
        return self.draft_seconds + self.verify_seconds


class DraftLengthPolicy(Protocol):
    """What the decoding loop and an engine ask of a draft-length policy."""

    def wants_draft(self) -> bool:
        """Whether the next decode should start its draft at all (a draft's start is not free)."""
        ...

    def next_k(self) -> int:
        """The draft length of the next round (0: a plain step)."""
        ...

    def observe(self, report: RoundReport) -> None: ...

    def count_undrafted_round(self) -> None:
        """A round of a decode whose draft was not started: it brings the next probe closer."""
        ...

    def observe_decode(self, *, setup_seconds: float, rounds: int) -> None:
        """A decode that started a draft ended: its one-off start cost and its number of rounds."""
        ...


@dataclass
class FixedDraftLength:
    """Always ``k`` tokens (0: plain decoding); learns nothing."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"draft length must be >= 0, got {self.k}")

    def wants_draft(self) -> bool:
        return self.k > 0

    def next_k(self) -> int:
        return self.k

    def observe(self, report: RoundReport) -> None:
        pass

    def count_undrafted_round(self) -> None:
        pass

    def observe_decode(self, *, setup_seconds: float, rounds: int) -> None:
        pass


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1.0 - weight) * old + weight * new


@dataclass
class ProbeSchedule:
    """While drafting is off: when to try it again. The wait doubles after each probe that still lost."""

    every: int = 8  # rounds off before the first probe
    longest: int = 512  # the wait doubles up to this many rounds
    waited: int = field(default=0, init=False)  # rounds off since drafting last paid or was last probed
    interval: int = field(default=0, init=False)  # the wait for the next probe

    def __post_init__(self) -> None:
        self.interval = self.every

    def restart(self) -> None:
        """Drafting pays: the next time it stops paying, probe soon again."""
        self.waited, self.interval = 0, self.every

    def back_off(self) -> None:
        self.interval = min(2 * self.interval, self.longest)


@dataclass
class SetupCost:
    """What starting a draft costs a decode, and over how many rounds that is shared."""

    smoothing: float = 0.3
    seconds: float = 0.0
    rounds: float | None = None  # rounds of a decode that started a draft (None: none yet)

    def observe(self, seconds: float, rounds: int) -> None:
        # Every round of such a decode could have drafted, so the rounds (at any k) share one start;
        # counting only drafting rounds made a draft that was switched off look ever dearer to switch on.
        if rounds > 0:
            self.seconds = _ema(self.seconds if self.rounds else None, seconds, self.smoothing)
            self.rounds = _ema(self.rounds, rounds, self.smoothing)

    def per_round(self) -> float:
        return self.seconds / self.rounds if self.rounds else 0.0


@dataclass
class AdaptiveDraftLength:
    """Chooses k from the measured acceptance and the measured costs of drafting, verifying and stepping."""

    max_draft: int  # the largest k
    probes: ProbeSchedule = field(default_factory=ProbeSchedule)
    smoothing: float = 0.3  # weight of the newest round in the running averages
    margin: float = 0.03  # drafting must promise this much more speed than plain steps: timings are noisy
    # ... and this much more were every draft token right: a draft that costs about what a target step does
    # (the target drafting for itself) can only break even, and timing noise would decide
    ceiling_margin: float = 0.10
    alpha: float = 0.8  # running per-token acceptance rate; optimistic start so that drafting is tried
    setup: SetupCost = field(default_factory=SetupCost)
    t_draft: float | None = None  # seconds per drafted position (None: not measured yet)
    t_verify: float | None = None  # seconds per multi-token verify call
    t_step: float | None = None  # seconds per one-token target step
    _probing: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_draft < 1:
            raise ValueError(f"max_draft must be >= 1, got {self.max_draft}")

    def _measured(self) -> bool:
        return None not in (self.t_step, self.t_draft, self.t_verify)

    def could_pay(self) -> bool:
        """Whether drafting would beat plain steps were every draft token right (True until measured).

        Probes only look for a change in acceptance: a draft that loses even at full acceptance is not
        probed, since each probe is a loss.
        """
        return not self._measured() or self._best(0.999, self.ceiling_margin) != 0

    def best_k(self) -> int | None:
        """The draft length with the highest expected tokens per second; None until costs are measured."""
        if not self._measured():
            return None
        return self._best(self.alpha, self.margin) if self.could_pay() else 0

    def _best(self, alpha: float, margin: float) -> int:
        """The best k at acceptance ``alpha``; k > 0 must beat plain steps by ``margin``."""
        best_k, best_rate = 0, 1.0 / self.t_step
        t_verify = max(self.t_verify, self.t_step)  # a verify pass does a step's work and more, whatever the clock said
        for k in range(1, self.max_draft + 1):
            rate = expected_accepted_tokens(alpha, k) / (k * self.t_draft + t_verify + self.setup.per_round())
            if rate > best_rate * (1.0 + margin):
                best_k, best_rate = k, rate
        return best_k

    def wants_draft(self) -> bool:
        if self.best_k() != 0:
            return True
        if not self.could_pay():
            return False
        # starting a draft to probe it costs its start too (a separate encoder): wait that much longer
        start_in_steps = self.setup.seconds / self.t_step if self.t_step else 0.0
        return self.probes.waited >= self.probes.interval * (1.0 + start_in_steps)

    def next_k(self) -> int:
        if self.t_step is None:
            return 0  # time one plain step first: it is the cost every draft length must beat
        best = self.best_k()
        if best is None:
            return self.max_draft  # then draft fully once to learn the costs of drafting
        if best > 0:
            self.probes.restart()
            return best
        self.probes.waited += 1
        if self.probes.waited > self.probes.interval and self.could_pay():
            self._probing = True
            return 1
        return 0

    def observe(self, report: RoundReport) -> None:
        # Times that are not a round's steady cost teach acceptance only: taken as per-position costs, a
        # draft's catch-up made a draft that was switched off look dearer at each probe, so it never came back.
        if report.k == 0:
            if not report.target_read_prompt:
                self.t_step = _ema(self.t_step, report.verify_seconds, self.smoothing)
            return
        trials = report.accepted + report.rejections
        if trials:
            self.alpha = _ema(self.alpha, min(report.accepted / trials, 0.999), self.smoothing)
        if report.draft_read is DraftRead.STEADY:
            self.t_draft = _ema(self.t_draft, report.draft_seconds / report.k, self.smoothing)
        if not report.target_read_prompt:
            self.t_verify = _ema(self.t_verify, report.verify_seconds, self.smoothing)
        if self._probing:
            self._probing = False
            self.probes.waited = 0
            if self.best_k() == 0:
                self.probes.back_off()

    def count_undrafted_round(self) -> None:
        if self.best_k() == 0:
            self.probes.waited += 1

    def observe_decode(self, *, setup_seconds: float, rounds: int) -> None:
        self.setup.observe(setup_seconds, rounds)


@dataclass
class DraftSwitch:
    """Keeps a self-stopping draft at its cap while its measured rounds beat plain steps, else off."""

    max_draft: int  # the cap of every drafting round
    probes: ProbeSchedule = field(default_factory=ProbeSchedule)
    window: int = 32  # the rate is measured over the last this many drafting rounds ...
    # ... each counted at most this many times the median round's time: one round that a busy machine
    # stalled twentyfold once switched a good draft off, and only its rare probes could bring it back ...
    outlier_factor: float = 3.0
    # ... and only after this many rounds: the first rounds of a process pay for one-off kernel set-up of
    # each verify width, and the first tokens of a transcript are the draft's least sure
    burn_in: int = 16
    step_window: int = 9  # the plain-step price: the median of the last this many plain steps
    margin: float = 0.03  # drafting must beat plain steps by this much: timings are noisy
    smoothing: float = 0.3
    setup: SetupCost = field(default_factory=SetupCost)
    t_step: float | None = None  # running average of plain steps: prices a probe's start in steps
    _rounds: deque = field(default_factory=deque, repr=False)  # (tokens committed, seconds) per drafting round
    _steps: deque = field(default_factory=deque, repr=False)  # seconds of the last plain steps
    _since_step: int = field(default=0, repr=False)  # drafting rounds since the last plain step
    _probing: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_draft < 1:
            raise ValueError(f"max_draft must be >= 1, got {self.max_draft}")
        self._rounds = deque(maxlen=self.window)
        self._steps = deque(maxlen=self.step_window)

    def _beats_steps(self, tokens: int, seconds: float) -> bool:
        return tokens / seconds > (1.0 + self.margin) / statistics.median(self._steps)

    def best_k(self) -> int | None:
        """The cap or 0 from the measured rates; None until burnt in."""
        if not self._steps or len(self._rounds) < self.burn_in:
            return None
        cap = self.outlier_factor * statistics.median(t for _, t in self._rounds)
        seconds = sum(min(t, cap) + self.setup.per_round() for _, t in self._rounds)
        return self.max_draft if self._beats_steps(sum(n for n, _ in self._rounds), seconds) else 0

    def wants_draft(self) -> bool:
        if self.best_k() != 0:
            return True
        start_in_steps = self.setup.seconds / self.t_step if self.t_step else 0.0
        return self.probes.waited >= self.probes.interval * (1.0 + start_in_steps)

    def next_k(self) -> int:
        if self.t_step is None:
            return 0  # time one plain step first: it is the price drafting must beat
        best = self.best_k()
        if best != 0 and self._since_step >= self.window:
            return 0  # a plain step now and then: measured only at the start, it was thrice too dear later
        if best is None:
            return self.max_draft
        if best > 0:
            self.probes.restart()
            return best
        self.probes.waited += 1
        if self.probes.waited > self.probes.interval:
            self._probing = True
            return self.max_draft  # a probe at the draft's own length
        return 0

    def observe(self, report: RoundReport) -> None:
        if report.k == 0:
            if not report.target_read_prompt:
                self.t_step = _ema(self.t_step, report.verify_seconds, self.smoothing)
                self._steps.append(report.verify_seconds)
                self._since_step = 0
            return
        self._since_step += 1
        # whole rounds are priced, catching up included, but not one in which a model read its prompt
        steady = not report.target_read_prompt and report.draft_read is not DraftRead.PROMPT
        if steady:
            self._rounds.append((report.committed, report.seconds))
        if self._probing:
            self._probing = False
            self.probes.waited = 0
            if steady and self._steps and self._beats_steps(report.committed, report.seconds):
                # A probe that beats plain steps starts the judgement afresh: the rounds that switched the
                # draft off describe text that has passed (a long-form window whose tail the draft missed
                # kept it off for the next windows, whose probes could not outvote those rounds).
                self._rounds.clear()
                self._rounds.append((report.committed, report.seconds))
                self.probes.restart()
            elif self.best_k() == 0:
                self.probes.back_off()

    def count_undrafted_round(self) -> None:
        if self.best_k() == 0:
            self.probes.waited += 1

    def observe_decode(self, *, setup_seconds: float, rounds: int) -> None:
        self.setup.observe(setup_seconds, rounds)


def draft_length_policy(max_draft: int, adaptive: bool = True, self_stopping: bool = False) -> DraftLengthPolicy:
    """The policy for a draft of at most ``max_draft`` tokens a round (0: no draft)."""
    if not adaptive or max_draft == 0:
        return FixedDraftLength(max_draft)
    return DraftSwitch(max_draft) if self_stopping else AdaptiveDraftLength(max_draft)


class ControllerMemory:
    """One draft-length policy per decoding setting, kept by an engine across decodes (a pair's costs persist)."""

    def __init__(self) -> None:
        self._policies: dict[tuple, DraftLengthPolicy] = {}

    def get(self, max_draft: int, adaptive: bool, sampling: bool, self_stopping: bool = False,
            context: Hashable = None) -> DraftLengthPolicy:
        """The policy for this k bound and mode; sampling accepts at other rates, so it learns apart, and so
        does each ``context`` an adapter names (Whisper: windows decoded with or without timestamps)."""
        key = (max_draft, adaptive, sampling, self_stopping, context)
        if key not in self._policies:
            self._policies[key] = draft_length_policy(max_draft, adaptive, self_stopping)
        return self._policies[key]
