"""whisper_spec: lossless speculative decoding for Whisper and text LLMs.

A small draft proposes tokens, the target verifies them all in one forward pass and keeps the longest
prefix it agrees with: greedy output is token-for-token the target's own.
"""

from whisper_spec.core.stats import SpeculationStats
from whisper_spec.transcribe import Transcription, TranscribeOptions, transcribe

__all__ = ["transcribe", "Transcription", "TranscribeOptions", "SpeculationStats"]
