"""How many tokens to draft next round: a fixed k, or a k chosen from measured acceptance and cost.

The adaptive rule maximises expected tokens per second. A round with draft length k produces
``expected_accepted_tokens(alpha, k)`` tokens and costs ``k * t_draft + t_verify`` (k >= 1) or one plain
target step ``t_step`` (k = 0). All three times are measured while decoding, so the rule adapts to the
machine: on a GPU a verify pass costs about one step, on a 2-core CPU it can cost twice that.

k = 0 is plain greedy decoding; a collapsed acceptance therefore costs nearly nothing. While at k = 0
the rule still probes k = 1 now and then, so that it notices when the draft becomes useful again.
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
    probe_every: int = 8  # rounds at k = 0 between two probes with k = 1
    smoothing: float = 0.3  # weight of the newest round in the running averages
    margin: float = 0.03  # drafting must promise this much more speed than plain steps: timings are noisy
    alpha: float = 0.8  # running per-token acceptance rate; optimistic start so that drafting is tried
    _t_draft: float | None = field(default=None, repr=False)  # seconds per drafted position
    _t_verify: float | None = field(default=None, repr=False)  # seconds per multi-token verify call
    _t_step: float | None = field(default=None, repr=False)  # seconds per one-token target step
    _rounds_at_zero: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.max_draft < 0:
            raise ValueError(f"max_draft must be >= 0, got {self.max_draft}")

    def next_k(self) -> int:
        if not self.adaptive or self.max_draft == 0:
            return self.max_draft
        if self._t_step is None:
            return 0  # time one plain step first: it is the cost every draft length must beat
        if self._t_draft is None or self._t_verify is None:
            return self.max_draft  # then draft fully once to learn the costs of drafting
        best_k, best_rate = 0, 1.0 / self._t_step
        # A verify pass does a plain step's work and more, whatever a noisy clock said once.
        t_verify = max(self._t_verify, self._t_step)
        for k in range(1, self.max_draft + 1):
            rate = expected_accepted_tokens(self.alpha, k) / (k * self._t_draft + t_verify)
            if rate > best_rate * (1.0 + self.margin):
                best_k, best_rate = k, rate
        if best_k == 0:
            self._rounds_at_zero += 1
            if self._rounds_at_zero % self.probe_every == 0:
                return 1
        else:
            self._rounds_at_zero = 0
        return best_k

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
