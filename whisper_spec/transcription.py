"""What a transcription takes and gives: its options, its typed result, and a stream of its segments."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from whisper_spec.core.stats import SpeculationStats
from whisper_spec.whisper.engine import WindowOptions
from whisper_spec.whisper.features import WINDOW_SECONDS
from whisper_spec.whisper.longform import LongformOptions, LongformResult, Progress, Segment


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # ISO code such as "en"; None detects it (multilingual targets)
    task: str = "transcribe"  # "transcribe", or "translate" into English (multilingual targets)
    # the most draft tokens per round; None: the draft's own choice (12 for self-stopping distilled drafts, else 6)
    draft_length: int | None = None
    adaptive_draft_length: bool = True  # shrink/grow k from measured acceptance and costs
    # a draft ends its round once the probability it gives its whole proposal falls below this (0: never;
    # None: the draft's own choice, 0.5 for distilled drafts, 0 for others)
    draft_confidence: float | None = None
    temperature: float = 0.0  # 0: greedy, token-identical to the target; > 0: sampling, same distribution
    seed: int | None = None  # random seed for temperature > 0
    timestamps: bool | None = None  # segment timestamps; None: only for audio longer than one 30-s window
    word_timestamps: bool = False  # word-level timestamps (implies timestamps)
    condition_on_previous_text: bool = True  # prompt each 30-s window with the transcript so far
    no_speech_threshold: float | None = 0.6  # a window above this no-speech probability ...
    logprob_threshold: float | None = -1.0  # ... and below this average log-probability is silence
    compression_ratio_threshold: float | None = 2.4  # a window whose text compresses better is a loop: dropped
    # float16/bfloat16 greedy: top-two margins below this are decided in float32, so that speculative output
    # equals the same precision's greedy output; None: the dtype's default; 0: off (see whisper.near_ties)
    near_tie_margin: float | None = None
    # text that comes before the audio (a glossary, the previous part's transcript): the first window is
    # prompted with it, as Whisper's initial_prompt and OpenAI's ``prompt``
    initial_prompt: str | None = None

    def longform_options(self, audio_seconds: float) -> LongformOptions:
        timestamps = self.word_timestamps or (
            self.timestamps if self.timestamps is not None else audio_seconds > WINDOW_SECONDS)
        window = WindowOptions(language=self.language, task=self.task, draft_length=self.draft_length,
                               adaptive_draft_length=self.adaptive_draft_length,
                               draft_confidence=self.draft_confidence, temperature=self.temperature,
                               seed=self.seed, timestamps=timestamps, near_tie_margin=self.near_tie_margin)
        return LongformOptions(window, self.condition_on_previous_text, self.no_speech_threshold,
                               self.logprob_threshold, self.compression_ratio_threshold, self.word_timestamps,
                               initial_prompt=self.initial_prompt)


@dataclass(frozen=True)
class Transcription:
    text: str
    segments: tuple[Segment, ...]  # timed pieces of the text (one per window without timestamps)
    tokens: tuple[int, ...]  # target token ids of the transcript (no prompt, no end-of-text; timestamps included)
    language: str
    audio_seconds: float
    stats: SpeculationStats
    target: str  # what decoded it
    draft: str | None

    @property
    def from_draft(self) -> tuple[bool, ...]:
        """Per token of ``tokens``: True where an accepted draft token, False where the target's own."""
        return tuple(flag for segment in self.segments for flag in segment.from_draft)

    @property
    def real_time_factor(self) -> float:
        """Compute seconds per audio second (lower is faster)."""
        return self.stats.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    @classmethod
    def from_longform(cls, result: LongformResult, target: str, draft: str | None,
                      wall_seconds: float) -> Transcription:
        return cls(result.text, result.segments, result.tokens, result.language, result.audio_seconds,
                   replace(result.stats, wall_seconds=wall_seconds), target, draft)


class SegmentStream:
    """A transcription in progress: iterate to receive segments as their windows are decoded.

    ``transcription`` holds the whole result once iteration has finished.
    """

    def __init__(self, progress: Iterator[Progress], finish: Callable[[LongformResult], Transcription]):
        self._progress = progress
        self._finish = finish
        self._transcription: Transcription | None = None

    def __iter__(self) -> Iterator[Segment]:
        for step in self._progress:
            yield from step.segments
            if step.result is not None:
                self._transcription = self._finish(step.result)

    @property
    def transcription(self) -> Transcription:
        if self._transcription is None:
            raise RuntimeError("the transcription is complete only after iterating over every segment")
        return self._transcription
