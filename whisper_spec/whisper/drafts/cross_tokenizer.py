"""A Whisper with another tokenizer as the draft (English-only tiny.en for multilingual base).

It decodes the same windows in its own vocabulary, under its own prompt and rules; its text reaches the
target through ``core.text_bridge`` and is re-tokenized there, and timestamps cross one to one by their
offset from <|0.00|> (both vocabularies have the same 1501 of them).
"""

from __future__ import annotations

from whisper_spec.core.model_roles import ModelDrafter
from whisper_spec.core.protocols import Drafter
from whisper_spec.core.text_bridge import TextBridgeDrafter, tokenization
from whisper_spec.whisper.checkpoints import WhisperCheckpoint
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts.protocol import DEFAULT_DRAFT_LENGTH, WindowBatch
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

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        hidden, seconds = encode_audio(self.checkpoint, batch.audio)
        self.decoder.begin(hidden)
        own, target = self.checkpoint.tokens, self.target.tokens
        timestamps = isinstance(batch.rules, TimestampRules)
        prompts = [own.prompt(language, batch.task, timestamps) for language in batch.language]
        shared_ids = {}
        if timestamps:
            # the draft writes its own timestamps under the same grammar; they cross by offset
            count = min(len(self.checkpoint.tokenizer) - own.timestamp_begin,
                        len(self.target.tokenizer) - target.timestamp_begin)
            shared_ids = {target.timestamp_begin + i: own.timestamp_begin + i for i in range(count)}
        inner = ModelDrafter(self.decoder, len(prompts), rules=own.rules([len(p) for p in prompts], timestamps),
                             stop_token_ids=[own.eot])
        return TextBridgeDrafter(inner, tokenization(self.checkpoint.tokenizer, [own.eot]),
                                 tokenization(self.target.tokenizer, [target.eot]), target.eot,
                                 prompts, [len(p) for p in batch.prompts], shared_ids), seconds
