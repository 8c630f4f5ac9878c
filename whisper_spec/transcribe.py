"""``transcribe()``: the one public entry point for speech, shared by the CLI, the demo and the evaluation."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from os import PathLike
from typing import Callable, Iterator, Literal, overload

import numpy as np
import torch

from whisper_spec.audio import SAMPLE_RATE, AudioLoadError, load_audio
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.presets import DEFAULT_PRESET, PRESETS
from whisper_spec.whisper.checkpoints import load_whisper
from whisper_spec.whisper.drafts import resolve_draft
from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions
from whisper_spec.whisper.features import WINDOW_SECONDS
from whisper_spec.whisper.longform import LongformOptions, LongformResult, Progress, Segment, decode_files

DEFAULT = "default"  # draft=DEFAULT: the preset's draft (or the target's best known draft)


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

    def longform_options(self, audio_seconds: float) -> LongformOptions:
        timestamps = self.word_timestamps or (
            self.timestamps if self.timestamps is not None else audio_seconds > WINDOW_SECONDS)
        window = WindowOptions(language=self.language, task=self.task, draft_length=self.draft_length,
                               adaptive_draft_length=self.adaptive_draft_length,
                               draft_confidence=self.draft_confidence, temperature=self.temperature,
                               seed=self.seed, timestamps=timestamps, near_tie_margin=self.near_tie_margin)
        return LongformOptions(window, self.condition_on_previous_text, self.no_speech_threshold,
                               self.logprob_threshold, self.compression_ratio_threshold, self.word_timestamps)


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
                      wall_seconds: float) -> "Transcription":
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


def _default_dtype(device: str) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


@functools.lru_cache(maxsize=8)
def load_pipeline(target: str, draft: str | None, device: str = "cpu", dtype: torch.dtype | None = None,
                  cuda_graphs: bool = False) -> SpeculativeWhisper:
    """A loaded target and draft, kept for the process (the CLI, the demo and evaluation reuse it).

    ``cuda_graphs``: on a CUDA device, decoding steps of up to 16 tokens run as fixed-shape steps replayed
    as CUDA graphs (``CachedWhisperDecoder``'s ``static_steps``); ignored elsewhere.
    """
    dtype = dtype or _default_dtype(device)
    static = cuda_graphs and torch.device(device).type == "cuda"
    checkpoint = load_whisper(target, device=device, dtype=dtype)
    engine = SpeculativeWhisper(checkpoint, static_steps=static)
    return engine.with_draft(resolve_draft(draft, checkpoint, device, dtype, static_steps=static)) if draft else engine


def resolve_models(preset: str | None, target: str | None, draft: str | None) -> tuple[str, str | None]:
    """(target, draft) from a preset name and/or explicit names; ``draft=DEFAULT`` takes the preset's."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    chosen = PRESETS[preset or (DEFAULT_PRESET if target is None else "")] if (preset or target is None) else None
    target = target or chosen.target
    if draft == DEFAULT:
        draft = chosen.draft if chosen is not None else _default_draft_for(target)
    return target, draft


def _default_draft_for(target: str) -> str | None:
    for preset in PRESETS.values():
        if preset.target == target:
            return preset.draft
    return None


@overload
def transcribe(audio: str | PathLike | np.ndarray, target: str | None = None, draft: str | None = DEFAULT,
               options: TranscribeOptions | None = None, *, preset: str | None = None, device: str = "cpu",
               dtype: torch.dtype | None = None, cuda_graphs: bool = False, stream: Literal[False] = False,
               **overrides) -> Transcription: ...


@overload
def transcribe(audio: str | PathLike | np.ndarray, target: str | None = None, draft: str | None = DEFAULT,
               options: TranscribeOptions | None = None, *, preset: str | None = None, device: str = "cpu",
               dtype: torch.dtype | None = None, cuda_graphs: bool = False, stream: Literal[True],
               **overrides) -> SegmentStream: ...


def transcribe(
    audio: str | PathLike | np.ndarray,
    target: str | None = None,
    draft: str | None = DEFAULT,
    options: TranscribeOptions | None = None,
    *,
    preset: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    cuda_graphs: bool = False,
    stream: bool = False,
    **overrides,
) -> Transcription | SegmentStream:
    """Transcribe a file (or 16 kHz mono samples) of any length with speculative decoding.

    Audio longer than 30 s goes through Whisper's sequential window algorithm (see
    ``whisper.longform``); the segments and text are the same with a draft as without one.

    Args:
        audio: a path to anything soundfile or ffmpeg reads, or a float array of 16 kHz mono samples.
        target: the model whose output you get (default: the preset's, offline ``base``).
        draft: a draft spec (see ``resolve_draft``); ``None`` runs the target alone (the baseline).
        options: decoding options; keyword ``overrides`` replace single fields (``language="en"``).
        preset: a named target/draft pair from ``whisper_spec.presets.PRESETS``.
        device, dtype: where and in what precision to run (default float16 on CUDA, float32 on CPU).
        cuda_graphs: on CUDA, replay decoding steps as CUDA graphs (see ``load_pipeline``).
        stream: return a ``SegmentStream`` that yields segments as they are decoded, instead of waiting.

    Raises:
        AudioLoadError: the file is missing, empty or not audio (the message names the file and why).
    """
    started = time.perf_counter()
    options = replace(options or TranscribeOptions(), **overrides)
    target_name, draft_name = resolve_models(preset, target, draft)
    if isinstance(audio, np.ndarray):
        samples = audio.astype(np.float32)
        source = "<array>"
    else:
        samples = load_audio(audio)
        source = str(audio)
    if samples.size == 0:
        raise AudioLoadError(source, "no audio samples")
    seconds = samples.size / SAMPLE_RATE
    longform = options.longform_options(seconds)
    engine = load_pipeline(target_name, draft_name, device, dtype, cuda_graphs)

    def finish(result: LongformResult) -> Transcription:
        return Transcription.from_longform(result, target_name, draft_name, time.perf_counter() - started)

    segments = SegmentStream(decode_files(engine, [(source, samples)], longform), finish)
    if stream:
        return segments
    for _ in segments:
        pass
    return segments.transcription
