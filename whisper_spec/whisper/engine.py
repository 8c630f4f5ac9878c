"""A loaded Whisper target (and optional draft) that decodes batches of 30-second windows.

This is where the Whisper adapters meet the model-agnostic core: the encoder runs once per window,
the target's cached decoder becomes a ``ModelVerifier``, the draft becomes a ``Drafter``, and
``core.loop.speculative_decode`` does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from whisper_spec.core.loop import DecodeOptions, speculative_decode
from whisper_spec.core.model_roles import ModelVerifier
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts import WhisperDraft, WindowBatch
from whisper_spec.whisper.features import encode_audio
from whisper_spec.whisper.logit_rules import SuppressionRules
from whisper_spec.whisper.prompts import decoder_prompt, detect_language


@dataclass(frozen=True)
class WindowOptions:
    language: str | None = None  # None: detect per window (multilingual targets) or English
    task: str = "transcribe"  # or "translate" (multilingual targets)
    draft_length: int = 6  # largest k per round
    adaptive_draft_length: bool = True  # choose k from measured acceptance and costs
    temperature: float = 0.0  # 0: greedy, token-identical to the target alone
    seed: int | None = None  # for temperature > 0
    max_new_tokens: int | None = None  # default: up to the decoder's 448 positions


@dataclass(frozen=True)
class DecodedWindow:
    tokens: tuple[int, ...]  # generated ids (prompt excluded, end-of-text excluded)
    text: str
    language: str
    stats: SpeculationStats


class SpeculativeWhisper:
    """A target checkpoint with an optional draft; ``draft=None`` is the target alone (the baseline)."""

    def __init__(self, target, draft: WhisperDraft | None = None):
        self.target = target
        self.draft = draft
        self.decoder = CachedWhisperDecoder(target.model.model.decoder)
        config = target.generation_config
        self.eot_token_id = target.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.suppress_tokens = tuple(config.suppress_tokens or ())
        self.begin_suppress_tokens = tuple(config.begin_suppress_tokens or ())

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    @property
    def is_multilingual(self) -> bool:
        return bool(getattr(self.target.generation_config, "is_multilingual", False))

    def with_draft(self, draft: WhisperDraft | None) -> "SpeculativeWhisper":
        """The same loaded target with another draft (``None``: the baseline)."""
        other = SpeculativeWhisper.__new__(SpeculativeWhisper)
        other.__dict__.update(self.__dict__)
        other.draft = draft
        return other

    def decode_windows(self, audio: Sequence[np.ndarray], options: WindowOptions = WindowOptions()) -> list[DecodedWindow]:
        """Transcribe B windows (each at most 30 s of 16 kHz mono audio) together, one row each."""
        hidden, encoder_seconds = encode_audio(self.target, audio)
        self.decoder.begin(hidden)
        batch = len(audio)
        if options.language is None and self.is_multilingual:
            languages = detect_language(self.decoder, self.target.generation_config, batch)
        else:
            languages = [options.language or "en"] * batch
        prompts = [decoder_prompt(self.target.generation_config, lang, options.task) for lang in languages]
        rules = SuppressionRules(tuple(len(p) for p in prompts), self.suppress_tokens, self.begin_suppress_tokens)
        verifier = ModelVerifier(self.decoder, batch, self.decoder.output_weight.shape[0], rules)
        drafter = None
        if self.draft is not None:
            drafter, draft_encoder_seconds = self.draft.start(
                WindowBatch(audio, hidden, prompts, rules, languages, options.task))
            encoder_seconds += draft_encoder_seconds
        max_positions = self.decoder.max_positions
        longest_prompt = max(len(p) for p in prompts)
        budget = max_positions - longest_prompt
        decode_options = DecodeOptions(
            max_new_tokens=min(options.max_new_tokens or budget, budget),
            draft_length=options.draft_length if drafter is not None else 0,
            adaptive_draft_length=options.adaptive_draft_length,
            temperature=options.temperature, seed=options.seed)
        result = speculative_decode(verifier, drafter, prompts, [self.eot_token_id], decode_options, device=self.device)
        windows = []
        share = encoder_seconds / batch
        for row, language in zip(result.rows, languages):
            tokens = tuple(t for t in row.tokens if t != self.eot_token_id)
            text = self.target.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
            windows.append(DecodedWindow(tokens, text, language, replace(row.stats, encoder_seconds=share)))
        return windows
