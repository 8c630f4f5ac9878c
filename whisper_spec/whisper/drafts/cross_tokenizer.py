"""A Whisper with another tokenizer as the draft (English-only tiny.en for multilingual base).

It decodes the same windows in its own vocabulary, under its own prompt and rules; its text reaches the
target through ``core.text_bridge`` and is re-tokenized there, and timestamps cross one to one by their
offset from <|0.00|> (both vocabularies have the same 1501 of them).
"""

from __future__ import annotations

from whisper_spec.core.model_roles import ModelDrafter
from whisper_spec.core.text_bridge import TextBridgeDrafter, tokenization
from whisper_spec.whisper.checkpoints import WhisperCheckpoint
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts.protocol import DEFAULT_DRAFT_LENGTH, Admitting, DraftSetup, WindowBatch
from whisper_spec.whisper.features import encode_audio
from whisper_spec.whisper.timestamps import TimestampRules


class CrossTokenizerDraft:
    draft_length = DEFAULT_DRAFT_LENGTH
    draft_confidence = 0.0
    reads_target_states = False

    def __init__(self, checkpoint: WhisperCheckpoint, target: WhisperCheckpoint, static_steps: bool = False):
        self.checkpoint = checkpoint
        self.target = target
        self.decoder = CachedWhisperDecoder(checkpoint.model.model.decoder, static_steps=static_steps)

    def start(self, setup: DraftSetup) -> Admitting:
        self.decoder.reserve(setup.capacity, setup.frames)
        own, target = self.checkpoint.tokens, self.target.tokens
        timestamps = isinstance(setup.rules, TimestampRules)
        shared_ids = {}
        if timestamps:
            # the draft writes its own timestamps under the same grammar; they cross by offset
            count = min(len(self.checkpoint.tokenizer) - own.timestamp_begin,
                        len(self.target.tokenizer) - target.timestamp_begin)
            shared_ids = {target.timestamp_begin + i: own.timestamp_begin + i for i in range(count)}
        own_rules = own.rules([0] * setup.capacity, timestamps)
        inner = ModelDrafter(self.decoder, setup.capacity, rules=own_rules, stop_token_ids=[own.eot])
        bridge = TextBridgeDrafter(inner, tokenization(self.checkpoint.tokenizer, [own.eot]),
                                   tokenization(self.target.tokenizer, [target.eot]), target.eot,
                                   [[] for _ in range(setup.capacity)], [0] * setup.capacity, shared_ids)

        def admit(batch: WindowBatch) -> float:
            hidden, seconds = encode_audio(self.checkpoint, batch.audio)
            self.decoder.begin_rows(batch.rows, hidden)
            inner.cache.forget(batch.rows)
            for row, language, target_prompt in zip(batch.rows, batch.language, batch.prompts):
                prompt = own.prompt(language, setup.task, timestamps)
                own_rules.admit(row, len(prompt))
                bridge.restart(row, prompt, len(target_prompt))
            return seconds

        return Admitting(bridge, admit)
