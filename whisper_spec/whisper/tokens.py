"""A Whisper vocabulary's special tokens, its decoder prompts and its greedy logit rules, looked up once.

Like openai/whisper's ``Tokenizer`` properties: every part of the package that needs an id
(end-of-text, <|0.00|>, a language) or the rules of a batch of prompts asks a checkpoint's ``tokens``.
Special ids differ between vocabularies (English-only tiny.en: end-of-text 50256; multilingual base: 50257).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from whisper_spec.whisper.logit_rules import SuppressionRules
from whisper_spec.whisper.timestamps import TimestampRules

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class WhisperTokens:
    eot: int  # <|endoftext|>; every id from here on is special (timestamps included)
    sot: int  # <|startoftranscript|>, the decoder's start token
    sot_prev: int  # <|startofprev|>: previous text follows
    no_timestamps: int  # <|notimestamps|>
    timestamp_begin: int  # <|0.00|>; every id from here on is a timestamp
    no_speech: int | None  # <|nospeech|> (<|nocaptions|> in older vocabularies); None if neither
    languages: Mapping[str, int] = field(default_factory=dict)  # "en" -> <|en|> (multilingual vocabularies)
    tasks: Mapping[str, int] = field(default_factory=dict)  # "transcribe" -> <|transcribe|> (multilingual)
    suppress: tuple[int, ...] = ()  # never generated
    begin_suppress: tuple[int, ...] = ()  # not allowed as the first generated token
    max_initial_timestamp_index: int | None = 50  # the first timestamp is at most this many 20-ms steps

    @classmethod
    def of(cls, tokenizer, generation_config) -> WhisperTokens:
        """The tokens of a transformers tokenizer and generation config (ids from the tokenizer itself)."""
        vocab = tokenizer.get_vocab()
        if "<|0.00|>" not in vocab:
            raise ValueError("this tokenizer has no timestamp tokens (<|0.00|>): not a Whisper vocabulary")
        multilingual = bool(getattr(generation_config, "is_multilingual", False))
        languages = {code.strip("<|>"): i for code, i in (generation_config.lang_to_id or {}).items()} \
            if multilingual else {}
        return cls(
            eot=vocab["<|endoftext|>"], sot=vocab["<|startoftranscript|>"], sot_prev=vocab["<|startofprev|>"],
            no_timestamps=vocab["<|notimestamps|>"], timestamp_begin=vocab["<|0.00|>"],
            no_speech=vocab.get("<|nospeech|>", vocab.get("<|nocaptions|>")), languages=languages,
            tasks={t: vocab[f"<|{t}|>"] for t in TASKS} if multilingual else {},
            suppress=tuple(generation_config.suppress_tokens or ()),
            begin_suppress=tuple(generation_config.begin_suppress_tokens or ()),
            max_initial_timestamp_index=getattr(generation_config, "max_initial_timestamp_index", 50))

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    def prompt(self, language: str | None, task: str = "transcribe", timestamps: bool = False,
               previous: Sequence[int] = ()) -> list[int]:
        """The forced prefix of a window.

        [startofprev, *previous] (when ``previous`` is not empty) + [sot] (+ [language, task] if
        multilingual) (+ [no-timestamps] unless ``timestamps``). ``previous`` is text the model continues
        from (the transcript so far, in long-form transcription); the caller keeps it short enough.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        prompt = [self.sot_prev, *previous] if previous else []
        prompt.append(self.sot)
        if self.multilingual:
            code = language or "en"
            if code not in self.languages:
                known = ", ".join(sorted(self.languages))
                raise ValueError(f"unknown language {language!r}; this model knows: {known}")
            prompt += [self.languages[code], self.tasks[task]]
        elif task == "translate" or language not in (None, "en"):
            raise ValueError(f"this checkpoint is English-only: language={language!r}, task={task!r} are not possible")
        if not timestamps:
            prompt.append(self.no_timestamps)
        return prompt

    def rules(self, prompt_lengths: Sequence[int], timestamps: bool) -> SuppressionRules | TimestampRules:
        """Greedy decoding's logit rules for rows with these prompt lengths: the one place they are built
        (the target, its drafts and distillation's labels all decode under them)."""
        suppression = SuppressionRules(list(prompt_lengths), self.suppress, self.begin_suppress)
        if not timestamps:
            return suppression
        return TimestampRules(suppression, self.timestamp_begin, self.no_timestamps, self.eot,
                              self.max_initial_timestamp_index)

    def text_ids(self, tokens: Sequence[int]) -> list[int]:
        """``tokens`` without the special ones (timestamps, end-of-text): what a tokenizer turns into words."""
        return [t for t in tokens if t < self.eot]
