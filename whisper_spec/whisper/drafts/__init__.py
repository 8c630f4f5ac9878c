"""The kinds of Whisper draft, one module each; each turns into a core ``Drafter`` that windows join.

- ``shared_encoder``: a decoder that reads the TARGET's encoder outputs (distil-whisper's design, or some
  of the target's own decoder layers); only its small decoder runs.
- ``separate_encoder``: a smaller Whisper with the same tokenizer and its own encoder, run once per window.
- ``cross_tokenizer``: a Whisper with another tokenizer (English-only tiny.en for multilingual base): its
  tokens travel to the target as text and are re-tokenized, and back.
- ``distilled``: a draft made by ``whisper-spec distill`` (shared encoder, restricted output vocabulary).
- ``rounds``: a draft decoder's greedy round as one fixed-shape computation (one CUDA graph on a GPU).

``protocol`` holds what they share: the ``DraftSetup`` a draft starts with, the ``WindowBatch`` of windows
that join it, and the ``WhisperDraft`` and ``WindowDrafter`` protocols. Whatever a draft proposes, the
target decides, so every kind is lossless; the kinds differ in cost. ``whisper_spec.draft_specs`` turns
the strings users write into these objects.
"""

from whisper_spec.whisper.drafts.protocol import (
    DEFAULT_DRAFT_LENGTH,
    DraftSetup,
    WhisperDraft,
    WindowBatch,
    WindowDrafter,
)

__all__ = ["DEFAULT_DRAFT_LENGTH", "DraftSetup", "WhisperDraft", "WindowBatch", "WindowDrafter"]
