"""How many tokens to draft next round: a fixed k, or a k chosen from measured acceptance and cost.

The adaptive rule maximises expected tokens per second. A round with draft length k produces
``expected_accepted_tokens(alpha, k)`` tokens and costs ``k * t_draft + t_verify + t_setup / R`` (k >= 1)
or one plain target step ``t_step`` (k = 0). ``t_setup`` is what a draft costs before its first token of
a decode (its own encoder, cross-attention keys and values), shared by the ``R`` drafting rounds that followed
it. All of these are measured while decoding, so the rule adapts to the machine: on a GPU a verify pass
costs about one step, on a 2-core CPU it can cost twice that.

Within a round a model draft may stop before k (``draft_continues``): once the probability it gives
its whole proposal so far (the product of its own token probabilities) falls below a threshold, its
next tokens are unlikely to be reached, and not drafting them saves draft steps while letting k be
large where the draft is sure (dynamic lookahead: Mamou et al. 2024 stop on a single token's
probability, as transformers' assisted generation does with 0.4; the product also counts a run of
merely likely tokens, measured better here). k is then a cap, and the geometric model above no longer
describes a round (the draft drafts long where it is sure, short where it is not). A *gated*
controller therefore only chooses between drafting up to the cap and plain steps, by comparing the
measured rates: tokens committed per second over the last drafting rounds against the median of the
last plain steps (while drafting it takes one plain step every ``gated_window`` rounds to keep that
price current: measured only at the start, it was three times too high after kernel set-up). A
round's time counts at most ``outlier_factor`` times the median round's: one round that a busy
machine stalled (seen: a 0.6-s round among 40-ms ones) once switched a good draft off, and
while a draft is off only its rare probes can bring the estimate back. For the same reason a gated
draft is judged only after ``gated_burn_in`` rounds: the first rounds of a process also pay for
one-off kernel set-up of each new verify width, and the first tokens of a transcript are the draft's
least sure; five such rounds switched a draft off that then ran 1.2x when forced on.

k = 0 is plain greedy decoding; a collapsed acceptance therefore costs nearly nothing. While at k = 0
the rule still probes k = 1 now and then, so that it notices when the draft becomes useful again; each
probe that finds drafting still unprofitable doubles the wait before the next one, so a useless draft
costs less and less. A controller can outlive one decode (an engine keeps its own), so that what one
window or prompt taught is not relearned, at a loss, by the next.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Hashable

import torch
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


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1.0 - weight) * old + weight * new


@dataclass
class DraftLengthController:
    """Chooses k for each round; ``observe`` feeds back what the round cost and how much it accepted."""

    max_draft: int  # upper bound on k (and the fixed k when not adaptive)
    adaptive: bool = True  # False: always max_draft
    gated: bool = False  # the draft stops itself (draft_continues): choose only between max_draft and 0
    probe_every: int = 8  # rounds at k = 0 before the first probe with k = 1
    max_probe_interval: int = 512  # the wait doubles after each failed probe, up to this many rounds
    smoothing: float = 0.3  # weight of the newest round in the running averages
    gated_window: int = 32  # a gated draft's rate is measured over its last this many drafting rounds ...
    outlier_factor: float = 3.0  # ... each counted at most this many times the median round's time ...
    gated_burn_in: int = 16  # ... and it drafts at least this many rounds before it can be switched off;
    step_window: int = 9  # the plain-step price is the median of the last this many plain steps, of which a
    # drafting gated controller takes one every ``gated_window`` rounds so that the price stays current
    margin: float = 0.03  # drafting must promise this much more speed than plain steps: timings are noisy
    # ... and, were every draft token right, this much more: a draft that costs about what a target step
    # does (the target drafting for itself) can only break even, and timing noise then decided (0.91x seen)
    ceiling_margin: float = 0.10
    alpha: float = 0.8  # running per-token acceptance rate; optimistic start so that drafting is tried
    _t_draft: float | None = field(default=None, repr=False)  # seconds per drafted position
    _t_verify: float | None = field(default=None, repr=False)  # seconds per multi-token verify call
    _t_step: float | None = field(default=None, repr=False)  # seconds per one-token target step
    _t_setup: float = field(default=0.0, repr=False)  # seconds a draft costs before its first round
    _rounds_per_setup: float | None = field(default=None, repr=False)  # rounds of a decode that set a draft up
    # gated: (tokens committed, seconds) of the last drafting rounds, and the last plain steps' seconds
    _rounds: deque = field(default_factory=deque, repr=False)
    _steps: deque = field(default_factory=deque, repr=False)
    _since_step: int = field(default=0, repr=False)  # gated: drafting rounds since the last plain step
    _rounds_at_zero: int = field(default=0, repr=False)
    _probe_interval: int = field(default=0, repr=False)
    _probing: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_draft < 0:
            raise ValueError(f"max_draft must be >= 0, got {self.max_draft}")
        self._probe_interval = self.probe_every
        self._rounds = deque(maxlen=self.gated_window)
        self._steps = deque(maxlen=self.step_window)

    def could_pay(self) -> bool:
        """Whether drafting would beat plain steps even if every draft token were right (always True
        until costs are measured, and for a gated draft, whose yield has no such ceiling here).

        Probes only look for a change in acceptance: a draft whose costs lose even at full acceptance
        (the target drafting for itself) is not probed, since each probe is a loss.
        """
        if self.gated or self._t_step is None or self._t_draft is None or self._t_verify is None:
            return True
        return self._best(0.999, self.ceiling_margin)[0] != 0

    def best_k(self) -> int | None:
        """The draft length with the highest expected tokens per second; None until costs are measured."""
        if self.gated:
            if not self._steps or len(self._rounds) < self.gated_burn_in:
                return None
            setup = self._t_setup / self._rounds_per_setup if self._rounds_per_setup else 0.0
            cap = self.outlier_factor * statistics.median(t for _, t in self._rounds)
            seconds = sum(min(t, cap) + setup for _, t in self._rounds)
            rate = sum(n for n, _ in self._rounds) / seconds
            return self.max_draft if rate > (1.0 + self.margin) / statistics.median(self._steps) else 0
        if self._t_step is None or self._t_draft is None or self._t_verify is None:
            return None
        return self._best(self.alpha, self.margin)[0] if self.could_pay() else 0

    def _best(self, alpha: float, margin: float) -> tuple[int, float]:
        """(k, tokens per second) of the best draft length at acceptance ``alpha``; k > 0 must beat plain
        steps by ``margin``."""
        best_k, best_rate = 0, 1.0 / self._t_step
        # A verify pass does a plain step's work and more, whatever a noisy clock said once.
        t_verify = max(self._t_verify, self._t_step)
        setup = self._t_setup / self._rounds_per_setup if self._rounds_per_setup else 0.0
        for k in range(1, self.max_draft + 1):
            rate = expected_accepted_tokens(alpha, k) / (k * self._t_draft + t_verify + setup)
            if rate > best_rate * (1.0 + margin):
                best_k, best_rate = k, rate
        return best_k, best_rate

    def wants_draft(self) -> bool:
        """Whether the next decode should start its draft at all (a draft's setup is not free).

        False only when measurements say plain steps are faster and no probe is due yet.
        """
        if not self.adaptive or self.max_draft == 0:
            return self.max_draft > 0
        if self.best_k() != 0:
            return True
        if not self.could_pay():
            return False
        # starting a draft to probe it costs its setup too (a separate encoder): wait that much longer
        setup_in_steps = self._t_setup / self._t_step if self._t_step else 0.0
        return self._rounds_at_zero >= self._probe_interval * (1.0 + setup_in_steps)

    def next_k(self) -> int:
        if not self.adaptive or self.max_draft == 0:
            return self.max_draft
        if self._t_step is None:
            return 0  # time one plain step first: it is the cost every draft length must beat
        best = self.best_k()
        if self.gated and best != 0 and self._since_step >= self.gated_window:
            return 0  # a plain step now and then: the first ones of a process are slow, and machines change
        if best is None:
            return self.max_draft  # then draft fully once to learn the costs of drafting
        if best > 0:
            self._rounds_at_zero, self._probe_interval = 0, self.probe_every
            return best
        self._rounds_at_zero += 1
        if self._rounds_at_zero > self._probe_interval and self.could_pay():
            self._probing = True
            return self.max_draft if self.gated else 1  # a gated draft probes at its own length
        return 0

    def observe(self, *, k: int, accepted: int, rejections: int, draft_seconds: float, verify_seconds: float,
                verify_prefilled: bool = False, draft_caught_up: bool = False, draft_prefilled: bool = False,
                rows: int = 1) -> None:
        """Feed back one round of draft length ``k``; counts are summed over the rows of the batch.

        ``rejections`` counts the rows whose draft was cut short by a disagreement: a row that accepted
        n of its k tokens saw n successes then one failure (or k successes, censored), so
        accepted / (accepted + rejections) estimates alpha for that geometric process. The draft's cost
        is taken per drafted position, which also prices model-free drafters (no forward calls, but
        time all the same).

        Times that are not a round's steady cost teach acceptance only: ``verify_prefilled`` (the target
        call also read the prompt: a decode's first round) and ``draft_caught_up`` (the draft first read
        the prompt or the tokens committed while it was off). Taken as per-position costs they made a
        draft that was switched off look ever dearer at each probe, so it never came back on. A gated
        controller prices whole rounds, catching up included (a few tokens in one pass), so that its
        probes count, but not a round in which the draft read its prompt (``draft_prefilled``, which
        implies ``draft_caught_up``); ``rows`` is the batch rows the round served (each committed one
        token of the target's own).
        """
        if k == 0:
            if not verify_prefilled:
                self._t_step = _ema(self._t_step, verify_seconds, self.smoothing)
                self._steps.append(verify_seconds)
                self._since_step = 0
            return
        self._since_step += 1
        trials = accepted + rejections
        if trials:
            self.alpha = _ema(self.alpha, min(accepted / trials, 0.999), self.smoothing)
        if self.gated and not (verify_prefilled or draft_prefilled):
            self._rounds.append((accepted + rows, draft_seconds + verify_seconds))
        if not (draft_caught_up or draft_prefilled):
            self._t_draft = _ema(self._t_draft, draft_seconds / k, self.smoothing)
        if not verify_prefilled:
            self._t_verify = _ema(self._t_verify, verify_seconds, self.smoothing)
        if self._probing:
            self._probing = False
            self._rounds_at_zero = 0
            seconds = draft_seconds + verify_seconds
            if (self.gated and self._steps and not (verify_prefilled or draft_prefilled)
                    and (accepted + rows) / seconds > (1.0 + self.margin) / statistics.median(self._steps)):
                # A probe that beats plain steps starts the judgement afresh: the rounds that switched the
                # draft off describe text that has passed (a long-form window whose last segments the
                # draft missed kept it off for the next windows, whose probes then could not outvote them).
                self._rounds.clear()
                self._rounds.append((accepted + rows, seconds))
                self._probe_interval = self.probe_every
            elif self.best_k() == 0:
                self._probe_interval = min(2 * self._probe_interval, self.max_probe_interval)

    def count_undrafted_round(self) -> None:
        """A round of a decode whose draft was not started (``wants_draft`` was False): it brings the
        next probe closer, as a round at k = 0 does, so that such a draft is retried at all."""
        if self.adaptive and self.max_draft > 0 and self.best_k() == 0:
            self._rounds_at_zero += 1

    def observe_decode(self, *, setup_seconds: float, rounds: int) -> None:
        """A decode that started a draft ended: its one-off setup cost and its number of rounds.

        Every round of such a decode could have drafted, so the rounds (at any k) are what one setup
        is shared by; counting only drafting rounds would make a draft that was switched off look
        ever costlier to switch on.
        """
        if rounds > 0:
            self._t_setup = _ema(self._t_setup if self._rounds_per_setup else None, setup_seconds, self.smoothing)
            self._rounds_per_setup = _ema(self._rounds_per_setup, rounds, self.smoothing)


class ControllerMemory:
    """One controller per decoding setting, kept by an engine across decodes (a pair's costs persist)."""

    def __init__(self) -> None:
        self._controllers: dict[tuple, DraftLengthController] = {}

    def get(self, max_draft: int, adaptive: bool, sampling: bool, gated: bool = False,
            context: Hashable = None) -> DraftLengthController:
        """The controller for this k bound and mode; sampling accepts at other rates, so it learns apart, and
        so does each ``context`` an adapter names (Whisper: windows decoded with or without timestamps)."""
        key = (max_draft, adaptive, sampling, gated, context)
        if key not in self._controllers:
            self._controllers[key] = DraftLengthController(max_draft, adaptive=adaptive, gated=gated)
        return self._controllers[key]
