"""A draft decoder that reads the target's encoder outputs: distil-whisper's design, or some of the
target's own decoder layers. Per window only its cross-attention keys and values are computed."""

from __future__ import annotations

from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts.protocol import DEFAULT_DRAFT_LENGTH, Admitting, DraftSetup, WindowBatch
from whisper_spec.whisper.drafts.rounds import model_drafter


class SharedEncoderDraft:
    draft_length = DEFAULT_DRAFT_LENGTH
    draft_confidence = 0.0
    reads_target_states = False

    def __init__(self, decoder: CachedWhisperDecoder, eot_token_id: int):
        """``decoder``: the draft's decoder (target vocabulary), begun on the target's encoder outputs."""
        self.decoder = decoder
        self.eot_token_id = eot_token_id

    def start(self, setup: DraftSetup) -> Admitting:
        self.decoder.reserve(setup.capacity, setup.frames)
        drafter, cache = model_drafter(self.decoder, setup, [self.eot_token_id])

        def admit(batch: WindowBatch) -> float:
            self.decoder.begin_rows(batch.rows, batch.target_encoder_hidden)
            cache.forget(batch.rows)
            return 0.0

        return Admitting(drafter, admit)
