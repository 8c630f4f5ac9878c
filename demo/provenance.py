"""Which tokens of a transcript were accepted draft tokens, and which the target produced itself.

``SpeculationStats`` counts acceptances but does not say which token came from where; the decoding
loop does, through its ``on_tokens(row, new_tokens)`` callback: each round commits the draft tokens the
target accepted followed by one token of the target's own. ``transcribe()`` does not yet take that
callback, so ``observe_rounds`` attaches it around one call, and ``token_sources`` lines the rounds up
with the transcript's tokens.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator, Sequence

import whisper_spec.whisper.engine as engine_module


class Source(str, Enum):
    DRAFT = "accepted draft token"
    TARGET = "target's own token"


@dataclass
class RoundLog:
    """The tokens each round committed, per decode call and row: ``calls[c][row]`` is a list of rounds."""

    calls: list[dict[int, list[list[int]]]] = field(default_factory=list)


# The callback is attached by swapping the engine's reference to the loop for the length of one call;
# one lock keeps two observed calls from swapping at once (the demo runs one transcription at a time).
_OBSERVE_LOCK = threading.Lock()


@contextmanager
def observe_rounds() -> Iterator[RoundLog]:
    """Record the rounds of every decode the speech engine runs inside the ``with`` block."""
    log = RoundLog()
    with _OBSERVE_LOCK:
        loop = engine_module.speculative_decode

        def recording_loop(*args, on_tokens=None, **kwargs):
            rounds: dict[int, list[list[int]]] = {}
            log.calls.append(rounds)

            def record(row: int, new_tokens: list[int]) -> None:
                rounds.setdefault(row, []).append(list(new_tokens))
                if on_tokens is not None:
                    on_tokens(row, new_tokens)

            return loop(*args, on_tokens=record, **kwargs)

        engine_module.speculative_decode = recording_loop
        try:
            yield log
        finally:
            engine_module.speculative_decode = loop


def token_sources(log: RoundLog, tokens: Sequence[int], dropped_ids: Sequence[int] = ()) -> tuple[Source, ...] | None:
    """One ``Source`` per token of ``tokens``, or None when the recorded rounds do not spell them.

    Within a round every token but the last is an accepted draft token; the last is the target's own
    (or a stop token the transcript leaves out: ``dropped_ids``). Each decoded window (one row of one
    call, in decode order) contributes a prefix of what it committed: long-form transcription keeps a
    window's text up to its last complete timestamp and decodes the rest again in the next window.
    """
    dropped = frozenset(dropped_ids)
    sources: list[Source] = []
    for rounds in log.calls:
        for row in sorted(rounds):
            committed = [(t, Source.TARGET if i == len(new) - 1 else Source.DRAFT)
                         for new in rounds[row] for i, t in enumerate(new) if t not in dropped]
            for token, source in committed:
                position = len(sources)
                if position == len(tokens) or tokens[position] != token:
                    break
                sources.append(source)
    return tuple(sources) if len(sources) == len(tokens) else None
