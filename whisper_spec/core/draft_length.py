"""How many tokens to draft next round: a fixed k, or a k chosen from measured acceptance and cost.

The adaptive rule maximises expected tokens per second. A round with draft length k produces
``expected_accepted_tokens(alpha, k)`` tokens and costs ``k * t_draft + t_verify + t_setup / R`` (k >= 1)
or one plain target step ``t_step`` (k = 0). ``t_setup`` is what a draft costs before its first token of
a decode (a separate-encoder draft's own encoder pass), shared by the ``R`` drafting rounds that followed
it. All of these are measured while decoding, so the rule adapts to the machine: on a GPU a verify pass
costs about one step, on a 2-core CPU it can cost twice that.

k = 0 is plain greedy decoding; a collapsed acceptance therefore costs nearly nothing. While at k = 0
the rule still probes k = 1 now and then, so that it notices when the draft becomes useful again; each
probe that finds drafting still unprofitable doubles the wait before the next one, so a useless draft
costs less and less. A controller can outlive one decode (an engine keeps its own), so that what one
window or prompt taught is not relearned, at a loss, by the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from whisper_spec.core.acceptance import expected_accepted_tokens


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1.0 - weight) * old + weight * new


@dataclass
class DraftLengthController:
    """Chooses k for each round; ``observe`` feeds back what the round cost and how much it accepted."""

    max_draft: int  # upper bound on k (and the fixed k when not adaptive)
    adaptive: bool = True  # False: always max_draft
    probe_every: int = 8  # rounds at k = 0 before the first probe with k = 1
    max_probe_interval: int = 512  # the wait doubles after each failed probe, up to this many rounds
    smoothing: float = 0.3  # weight of the newest round in the running averages
    margin: float = 0.03  # drafting must promise this much more speed than plain steps: timings are noisy
    alpha: float = 0.8  # running per-token acceptance rate; optimistic start so that drafting is tried
    _t_draft: float | None = field(default=None, repr=False)  # seconds per drafted position
    _t_verify: float | None = field(default=None, repr=False)  # seconds per multi-token verify call
    _t_step: float | None = field(default=None, repr=False)  # seconds per one-token target step
    _t_setup: float = field(default=0.0, repr=False)  # seconds a draft costs before its first round
    _rounds_per_setup: float | None = field(default=None, repr=False)  # rounds of a decode that set a draft up
    _rounds_at_zero: int = field(default=0, repr=False)
    _probe_interval: int = field(default=0, repr=False)
    _probing: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_draft < 0:
            raise ValueError(f"max_draft must be >= 0, got {self.max_draft}")
        self._probe_interval = self.probe_every

    def best_k(self) -> int | None:
        """The draft length with the highest expected tokens per second; None until costs are measured."""
        if self._t_step is None or self._t_draft is None or self._t_verify is None:
            return None
        best_k, best_rate = 0, 1.0 / self._t_step
        # A verify pass does a plain step's work and more, whatever a noisy clock said once.
        t_verify = max(self._t_verify, self._t_step)
        setup = self._t_setup / self._rounds_per_setup if self._rounds_per_setup else 0.0
        for k in range(1, self.max_draft + 1):
            rate = expected_accepted_tokens(self.alpha, k) / (k * self._t_draft + t_verify + setup)
            if rate > best_rate * (1.0 + self.margin):
                best_k, best_rate = k, rate
        return best_k

    def wants_draft(self) -> bool:
        """Whether the next decode should start its draft at all (a draft's setup is not free).

        False only when measurements say plain steps are faster and no probe is due yet.
        """
        if not self.adaptive or self.max_draft == 0:
            return self.max_draft > 0
        return self.best_k() != 0 or self._rounds_at_zero >= self._probe_interval

    def next_k(self) -> int:
        if not self.adaptive or self.max_draft == 0:
            return self.max_draft
        if self._t_step is None:
            return 0  # time one plain step first: it is the cost every draft length must beat
        best = self.best_k()
        if best is None:
            return self.max_draft  # then draft fully once to learn the costs of drafting
        if best > 0:
            self._rounds_at_zero, self._probe_interval = 0, self.probe_every
            return best
        self._rounds_at_zero += 1
        if self._rounds_at_zero > self._probe_interval:
            self._probing = True
            return 1
        return 0

    def observe(self, *, k: int, accepted: int, rejections: int, draft_seconds: float, verify_seconds: float) -> None:
        """Feed back one round of draft length ``k``; counts are summed over the rows of the batch.

        ``rejections`` counts the rows whose draft was cut short by a disagreement: a row that accepted
        n of its k tokens saw n successes then one failure (or k successes, censored), so
        accepted / (accepted + rejections) estimates alpha for that geometric process. The draft's cost
        is taken per drafted position, which also prices model-free drafters (no forward calls, but
        time all the same).
        """
        if k == 0:
            self._t_step = _ema(self._t_step, verify_seconds, self.smoothing)
            return
        trials = accepted + rejections
        if trials:
            self.alpha = _ema(self.alpha, min(accepted / trials, 0.999), self.smoothing)
        self._t_draft = _ema(self._t_draft, draft_seconds / k, self.smoothing)
        self._t_verify = _ema(self._t_verify, verify_seconds, self.smoothing)
        if self._probing:
            self._probing = False
            self._rounds_at_zero = 0
            if self.best_k() == 0:
                self._probe_interval = min(2 * self._probe_interval, self.max_probe_interval)

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
        self._controllers: dict[tuple[int, bool, bool], DraftLengthController] = {}

    def get(self, max_draft: int, adaptive: bool, sampling: bool) -> DraftLengthController:
        """The controller for this k bound and mode; sampling accepts at other rates, so it learns apart."""
        key = (max_draft, adaptive, sampling)
        if key not in self._controllers:
            self._controllers[key] = DraftLengthController(max_draft, adaptive=adaptive)
        return self._controllers[key]
