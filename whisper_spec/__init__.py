"""whisper_spec: lossless speculative decoding for Whisper and text LLMs.

A small draft proposes tokens, the target verifies them all in one forward pass and keeps the longest
prefix it agrees with: greedy output is token-for-token the target's own.

    from whisper_spec import WhisperModel
    model = WhisperModel()                      # offline base + its shipped distilled draft
    print(model.transcribe("clip.wav", language="en").text)

Names are imported on first use, so that ``import whisper_spec`` (and each CLI verb) loads only what
it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "WhisperModel": "whisper_spec.model",
    "FileProgress": "whisper_spec.model",
    "transcribe": "whisper_spec.model",
    "TranscribeOptions": "whisper_spec.transcription",
    "Transcription": "whisper_spec.transcription",
    "SegmentStream": "whisper_spec.transcription",
    "Segment": "whisper_spec.whisper.longform",
    "FileRequest": "whisper_spec.whisper.longform",
    "FileQueue": "whisper_spec.whisper.longform",
    "Word": "whisper_spec.whisper.longform",
    "SpeculationStats": "whisper_spec.core.stats",
    "generate": "whisper_spec.generation",
    "GenerateOptions": "whisper_spec.generation",
    "Generation": "whisper_spec.generation",
}
__all__ = ["WhisperModel", "FileProgress", "transcribe", "TranscribeOptions", "Transcription", "SegmentStream",
           "Segment", "Word", "FileRequest", "FileQueue", "SpeculationStats", "generate", "GenerateOptions",
           "Generation"]

if TYPE_CHECKING:
    from whisper_spec.core.stats import SpeculationStats
    from whisper_spec.generation import GenerateOptions, Generation, generate
    from whisper_spec.model import FileProgress, WhisperModel, transcribe
    from whisper_spec.transcription import SegmentStream, TranscribeOptions, Transcription
    from whisper_spec.whisper.longform import FileQueue, FileRequest, Segment, Word


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'whisper_spec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
