"""A smaller Whisper with the target's tokenizer and its own encoder, run once per window."""

from __future__ import annotations

from whisper_spec.whisper.checkpoints import WhisperCheckpoint
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts.protocol import DEFAULT_DRAFT_LENGTH, Admitting, DraftSetup, WindowBatch
from whisper_spec.whisper.drafts.rounds import model_drafter
from whisper_spec.whisper.features import encode_audio


class SeparateEncoderDraft:
    draft_length = DEFAULT_DRAFT_LENGTH
    draft_confidence = 0.0
    reads_target_states = False

    def __init__(self, checkpoint: WhisperCheckpoint, static_steps: bool = False):
        self.checkpoint = checkpoint
        self.decoder = CachedWhisperDecoder(checkpoint.model.model.decoder, static_steps=static_steps)

    def start(self, setup: DraftSetup) -> Admitting:
        self.decoder.reserve(setup.capacity, setup.frames)
        drafter, cache = model_drafter(self.decoder, setup, [self.checkpoint.tokens.eot])

        def admit(batch: WindowBatch) -> float:
            hidden, seconds = encode_audio(self.checkpoint, batch.audio)
            self.decoder.begin_rows(batch.rows, hidden)
            cache.forget(batch.rows)
            return seconds

        return Admitting(drafter, admit)
