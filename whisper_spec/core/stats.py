"""Statistics of a decode: what was drafted, accepted and computed, and where the time went."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch


@dataclass(frozen=True)
class SpeculationStats:
    """Counts and timings of one decode (one row, or a sum over rows and files).

    Forward calls count batched passes: one verify pass over a batch of 16 rows is one target call.
    """

    tokens: int = 0  # tokens generated (prompt excluded)
    rounds: int = 0  # draft/verify rounds (plain decoding: one round per token)
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the target agreed with
    target_calls: int = 0  # target decoder forward passes
    draft_calls: int = 0  # draft model forward passes
    encoder_seconds: float = 0.0  # encoder passes (target's and draft's)
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    wall_seconds: float = 0.0  # the whole call, audio loading and features included
    rescored: int = 0  # positions whose half-precision near-tie an exact float32 rescoring decided
    # accepted-length histogram: how many rounds accepted n draft tokens, as sorted (n, count) pairs
    accepted_lengths: tuple[tuple[int, int], ...] = ()

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens accepted (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Draft tokens accepted per round: each round also yields one token of the target's own."""
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.tokens / self.target_calls if self.target_calls else 0.0

    def __add__(self, other: SpeculationStats) -> SpeculationStats:
        merged = {f.name: getattr(self, f.name) + getattr(other, f.name)
                  for f in fields(self) if f.name != "accepted_lengths"}
        histogram = Counter(dict(self.accepted_lengths)) + Counter(dict(other.accepted_lengths))
        return SpeculationStats(**merged, accepted_lengths=tuple(sorted(histogram.items())))

    def summary(self) -> str:
        """One line a person can read."""
        return (f"{self.tokens} tokens in {self.rounds} rounds; {self.target_calls} target calls, "
                f"{self.draft_calls} draft calls; acceptance {self.acceptance_rate:.2f} "
                f"({self.accepted}/{self.drafted}), mean accepted length {self.mean_accepted_length:.2f}; "
                f"time encoder {self.encoder_seconds:.3f}s, draft {self.draft_seconds:.3f}s, "
                f"verify {self.verify_seconds:.3f}s, wall {self.wall_seconds:.3f}s"
                + (f"; {self.rescored} near-ties rescored in float32" if self.rescored else ""))


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so that a clock read after it measures the work itself."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


@dataclass
class PhaseTime:
    """The seconds one ``Stopwatch.phase`` took, known once it has ended."""

    seconds: float = 0.0


@dataclass
class Stopwatch:
    """Accumulates seconds per named phase; synchronizes the GPU around each phase."""

    device: torch.device | str | None = None
    seconds: Counter = field(default_factory=Counter)

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseTime]:
        synchronize(self.device)
        start = time.perf_counter()
        timed = PhaseTime()
        try:
            yield timed
        finally:
            synchronize(self.device)
            timed.seconds = time.perf_counter() - start
            self.seconds[name] += timed.seconds
