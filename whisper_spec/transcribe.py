"""``transcribe()``: the one public entry point for speech, shared by the CLI, the demo and the evaluation."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, fields, replace
from os import PathLike

import numpy as np
import torch

from whisper_spec.audio import SAMPLE_RATE, AudioLoadError, load_audio
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.presets import DEFAULT_PRESET, PRESETS
from whisper_spec.whisper.checkpoints import load_whisper
from whisper_spec.whisper.drafts import resolve_draft
from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions
from whisper_spec.whisper.features import WINDOW_SECONDS

DEFAULT = "default"  # draft=DEFAULT: the preset's draft (or the target's best known draft)


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # ISO code such as "en"; None detects it (multilingual targets)
    task: str = "transcribe"  # "transcribe", or "translate" into English (multilingual targets)
    draft_length: int = 6  # the most draft tokens per round
    adaptive_draft_length: bool = True  # shrink/grow k from measured acceptance and costs
    temperature: float = 0.0  # 0: greedy, token-identical to the target; > 0: sampling, same distribution
    seed: int | None = None  # random seed for temperature > 0

    def window_options(self) -> WindowOptions:
        return WindowOptions(**{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Transcription:
    text: str
    tokens: tuple[int, ...]  # target token ids of the transcript (no prompt, no end-of-text)
    language: str
    audio_seconds: float
    stats: SpeculationStats
    target: str  # what decoded it
    draft: str | None

    @property
    def real_time_factor(self) -> float:
        """Compute seconds per audio second (lower is faster)."""
        return self.stats.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0


def _default_dtype(device: str) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


@functools.lru_cache(maxsize=4)
def load_pipeline(target: str, draft: str | None, device: str = "cpu", dtype: torch.dtype | None = None) -> SpeculativeWhisper:
    """A loaded target and draft, kept for the process (the CLI, the demo and evaluation reuse it)."""
    dtype = dtype or _default_dtype(device)
    checkpoint = load_whisper(target, device=device, dtype=dtype)
    engine = SpeculativeWhisper(checkpoint)
    return engine.with_draft(resolve_draft(draft, checkpoint, device, dtype)) if draft else engine


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


def transcribe(
    audio: str | PathLike | np.ndarray,
    target: str | None = None,
    draft: str | None = DEFAULT,
    options: TranscribeOptions | None = None,
    *,
    preset: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    **overrides,
) -> Transcription:
    """Transcribe a file (or 16 kHz mono samples) with speculative decoding.

    Args:
        audio: a path to anything soundfile or ffmpeg reads, or a float array of 16 kHz mono samples.
        target: the model whose output you get (default: the preset's, offline ``base``).
        draft: a draft spec (see ``resolve_draft``); ``None`` runs the target alone (the baseline).
        options: decoding options; keyword ``overrides`` replace single fields (``language="en"``).
        preset: a named target/draft pair from ``whisper_spec.presets.PRESETS``.
        device, dtype: where and in what precision to run (default float16 on CUDA, float32 on CPU).

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
    if seconds > WINDOW_SECONDS:
        raise AudioLoadError(source, f"{seconds:.1f} s of audio: this version transcribes at most {WINDOW_SECONDS} s")
    engine = load_pipeline(target_name, draft_name, device, dtype)
    window = engine.decode_windows([samples], options.window_options())[0]
    stats = replace(window.stats, wall_seconds=time.perf_counter() - started)
    return Transcription(window.text, window.tokens, window.language, seconds, stats, target_name, draft_name)
