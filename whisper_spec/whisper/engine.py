"""A loaded Whisper target (and optional draft) that decodes batches of 30-second windows.

This is where the Whisper adapters meet the model-agnostic core: the encoder runs once per window,
the target's cached decoder becomes a ``ModelVerifier``, the draft becomes a ``Drafter``, and
``core.loop.SpeculativeBatch`` does the rest. ``WindowSlots`` keeps a batch of rows that windows join and
leave between rounds (continuous batching); ``decode_windows`` is the batch whose windows start together.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from whisper_spec.core.draft_length import ControllerMemory
from whisper_spec.core.loop import DecodeOptions, SpeculativeBatch
from whisper_spec.core.model_roles import ModelVerifier, NearTieRule
from whisper_spec.core.stats import SpeculationStats, Stopwatch
from whisper_spec.whisper.checkpoints import WhisperCheckpoint
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts import DraftSetup, WhisperDraft, WindowBatch, WindowDrafter
from whisper_spec.whisper.features import encode_audio
from whisper_spec.whisper.int8_decoder import Int8WhisperDecoder
from whisper_spec.whisper.language import detect_language
from whisper_spec.whisper.near_ties import ExactDecoder, default_margin


@dataclass(frozen=True)
class WindowOptions:
    language: str | None = None  # None: detect per window (multilingual targets) or English
    task: str = "transcribe"  # or "translate" (multilingual targets)
    draft_length: int | None = None  # largest k per round; None: the draft's own ``draft_length``
    adaptive_draft_length: bool = True  # choose k from measured acceptance and costs
    # a draft ends its round below this probability of its proposal (0: never; None: the draft's own
    # ``draft_confidence``)
    draft_confidence: float | None = None
    temperature: float = 0.0  # 0: greedy, token-identical to the target alone
    seed: int | None = None  # for temperature > 0
    max_new_tokens: int | None = None  # default: up to the decoder's 448 positions
    timestamps: bool = False  # decode Whisper's timestamp tokens (segment boundaries) with the text
    # avg_logprob costs one extra target pass; it is computed only for windows whose no-speech probability
    # exceeds this (where Whisper's silence check needs it); None: for every window
    logprob_if_no_speech_above: float | None = None
    return_encoder_output: bool = False  # keep each window's encoder output (word timestamps align against it)
    # greedy in float16/bfloat16: top-two margins below this are decided by a float32 rescoring, which keeps
    # speculative output equal to the same engine's greedy output; None: the dtype's default
    # (``whisper.near_ties.DEFAULT_MARGINS``; 0 for float32); 0: off
    near_tie_margin: float | None = None


@dataclass(frozen=True)
class DecodedWindow:
    tokens: tuple[int, ...]  # generated ids (prompt excluded, end-of-text excluded; timestamps included)
    text: str
    language: str
    stats: SpeculationStats
    no_speech_prob: float  # the target's probability of <|nospeech|> right after <|startoftranscript|>
    avg_logprob: float | None  # mean log-probability of the generated tokens and end-of-text (see WindowOptions)
    stopped: bool  # True: end-of-text ended the window; False: the token budget did
    encoder_output: Tensor | None = None  # [1500, D] the target's encoder output, when asked for
    # how it was decoded, not what was decoded: left out of equality
    # per token of ``tokens``: an accepted draft token (True) or the target's own
    from_draft: tuple[bool, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class WindowRequest:
    audio: np.ndarray  # at most 30 s of 16 kHz samples
    previous: tuple[int, ...]  # the <|startofprev|> prompt: target ids of the text before the window
    language: str | None  # None: the options' language, else detected (multilingual targets)


class SpeculativeWhisper:
    """A target checkpoint with an optional draft; ``draft=None`` is the target alone (the baseline)."""

    def __init__(self, target: WhisperCheckpoint, draft: WhisperDraft | None = None, static_steps: bool = False,
                 int8_decoder: bool = False):
        """``static_steps``: the target's decoding passes run as fixed-shape steps, replayed as CUDA graphs
        on a GPU (see ``CachedWhisperDecoder``); a draft decoder chooses for itself. ``int8_decoder``: the
        target's decoder on int8 weights with position-exact passes (``whisper.int8_decoder``), for a target
        loaded at int8 (``load_whisper(..., int8=True)``)."""
        self.target = target
        self.tokens = target.tokens
        self.draft = draft
        self.draft_lengths = ControllerMemory()  # what this pair costs here, learned across windows
        if int8_decoder and (static_steps or not target.int8):
            raise ValueError("an int8 decoder needs a target loaded at int8 (each window's cross-attention keys "
                             "and values the same bits in any batch), and runs without CUDA graph steps")
        self.decoder = (Int8WhisperDecoder(target.model.model.decoder) if int8_decoder
                        else CachedWhisperDecoder(target.model.model.decoder, static_steps=static_steps))
        self._exact: dict[str, ExactDecoder] = {}  # the float32 decoder for near-ties, built on first need

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    def with_draft(self, draft: WhisperDraft | None) -> SpeculativeWhisper:
        """The same loaded target with another draft (``None``: the baseline)."""
        other = SpeculativeWhisper.__new__(SpeculativeWhisper)
        other.__dict__.update(self.__dict__)
        other.draft = draft
        other.draft_lengths = ControllerMemory()
        return other

    def text(self, tokens: Sequence[int]) -> str:
        """The words of ``tokens`` (timestamps and other special tokens dropped)."""
        return self.target.tokenizer.decode(self.tokens.text_ids(tokens)).strip()

    def decode_windows(self, audio: Sequence[np.ndarray], options: WindowOptions = WindowOptions(), *,
                       previous: Sequence[Sequence[int]] | None = None,
                       languages: Sequence[str | None] | None = None) -> list[DecodedWindow]:
        """Transcribe B windows (each at most 30 s of 16 kHz mono audio) together, one row each.

        Args:
            audio: B arrays of 16 kHz mono samples.
            options: decoding options shared by the rows.
            previous: per row, target token ids of the text before the window (Whisper's <|startofprev|>
                prompt; long-form transcription passes the transcript so far); default none.
            languages: per row, a language code or None (detect); default ``options.language`` for all.
        """
        batch = len(audio)
        previous = previous if previous is not None else [()] * batch
        wanted = list(languages) if languages is not None else [options.language] * batch
        if len(previous) != batch or len(wanted) != batch:
            raise ValueError(f"{batch} windows need {batch} previous-text prompts and languages, "
                             f"got {len(previous)} and {len(wanted)}")
        slots = self.slots(batch, options)
        slots.admit([(i, WindowRequest(a, tuple(p), lang))
                     for i, (a, p, lang) in enumerate(zip(audio, previous, wanted))])
        done: dict[int, DecodedWindow] = {}
        while slots.busy:
            done.update(slots.round())
        slots.close()
        return [done[i] for i in range(batch)]

    def slots(self, capacity: int, options: WindowOptions = WindowOptions()) -> WindowSlots:
        """``capacity`` rows that windows join and leave between speculative rounds (see ``WindowSlots``)."""
        return WindowSlots(self, capacity, options)

    def _draft_limits(self, options: WindowOptions) -> tuple[float, int]:
        """(confidence threshold, largest k) of this decode: the options', else the draft's own (0 without one)."""
        if self.draft is None:
            return 0.0, 0
        confidence = self.draft.draft_confidence if options.draft_confidence is None else options.draft_confidence
        return confidence, self.draft.draft_length if options.draft_length is None else options.draft_length

    def _no_speech_probs(self, verifier: ModelVerifier, rows: Sequence[int],
                         prompts: Sequence[Sequence[int]]) -> list[float]:
        """Whisper's no-speech probability of each of ``rows`` (whose prompts are ``prompts``), from the
        target's raw scores after <|startoftranscript|>.

        Runs the prompts through the verifier's cache, which the first decoding step then reuses.
        """
        if self.tokens.no_speech is None:
            return [0.0] * len(prompts)
        after_sot = [len(p) - p.index(self.tokens.sot) for p in prompts]
        logits = verifier.cache.logits(torch.tensor(list(rows), dtype=torch.long), prompts, after_sot)[:, 0]
        return torch.softmax(logits.float(), dim=-1)[:, self.tokens.no_speech].tolist()

    def _avg_logprobs(self, verifier: ModelVerifier, rules, prompts: Mapping[int, Sequence[int]],
                      generated: Sequence[Sequence[int]], rows: Sequence[int]) -> dict[int, float]:
        """Mean log-probability (under the target's rules) of each row's generated tokens, end-of-text included.

        One teacher-forced target pass over the finished sequences: the same computation whether the
        tokens came from speculative or plain decoding, so decisions made on it agree between the two.
        """
        rows = [r for r, g in zip(rows, generated) if g]
        generated = [g for g in generated if g]
        if not rows:
            return {}
        index = torch.tensor(rows, dtype=torch.long)
        contexts = [list(prompts[r]) + list(g[:-1]) for r, g in zip(rows, generated)]
        logits = verifier.cache.logits(index, contexts, [len(g) for g in generated])
        logits = rules(index, [prompts[r] for r in rows], [g[:-1] for g in generated], logits)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        averages = {}
        for i, (r, g) in enumerate(zip(rows, generated)):
            picked = logprobs[i, torch.arange(len(g)), torch.tensor(g)]
            # Whisper divides by the text length plus one (for end-of-text), whether or not it was reached
            ended = g[-1] == self.tokens.eot
            averages[r] = float(picked.sum()) / (len(g) + (0 if ended else 1))
        return averages


@dataclass
class _Slot:
    key: Hashable  # the caller's name for the window
    prompt: list[int]
    language: str
    no_speech_prob: float
    encoder_seconds: float  # its share of the encoder passes that admitted it
    audio: np.ndarray
    encoder_output: Tensor  # [S, D]


class WindowSlots:
    """``capacity`` rows of one engine's target (and draft) that windows join and leave between rounds.

    Continuous batching, as LLM servers do it: ``admit`` encodes new windows and starts them in free
    rows while the others are mid-decode, ``round`` runs one draft/verify round over every row decoding
    and returns the windows it finished, whose rows are free at once. Every row's tokens are its own
    window's greedy tokens, whatever decodes beside it. One options object for all rows (one decoding
    mode); ``close`` ends it, telling the draft-length policy what starting the draft cost.
    """

    def __init__(self, engine: SpeculativeWhisper, capacity: int, options: WindowOptions):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.engine, self.capacity, self.options = engine, capacity, options
        self.frames = engine.target.model.config.max_source_positions
        self.records_states = engine.draft is not None and engine.draft.reads_target_states
        engine.decoder.reserve(capacity, self.frames, record_hidden=self.records_states)
        self.rules = engine.tokens.rules([0] * capacity, options.timestamps)
        margin = options.near_tie_margin
        if margin is None:
            margin = default_margin(engine.decoder.dtype)
        self.rescorer, self.near_ties = None, None
        if margin > 0 and options.temperature == 0:
            if "decoder" not in engine._exact:  # shared with engines made by with_draft (same dict)
                engine._exact["decoder"] = ExactDecoder(engine.target.model.model.decoder)
            self.rescorer = engine._exact["decoder"].rescorer(capacity, self.frames)
            self.near_ties = NearTieRule(margin, self.rescorer)
        self.verifier = ModelVerifier(engine.decoder, capacity, self.rules, self.near_ties)
        self.confidence, self.max_draft = engine._draft_limits(options)
        # A self-stopping draft is only switched on or off, from its measured round rate, and it agrees less
        # in the timestamp mode (long-form windows): one bad long-form window had switched it off for the
        # short ones too. Other drafts share one policy: apart, tiny.en ran its own encoder to relearn each mode.
        gated = self.confidence > 0
        self.controller = engine.draft_lengths.get(
            self.max_draft, options.adaptive_draft_length, options.temperature > 0, gated,
            context=("timestamps" if options.timestamps else "text") if gated else None)
        self.setup = Stopwatch(engine.device)  # all of the draft's start: its own encoder, cross-attention K/V
        self.drafter: WindowDrafter | None = None
        self.batch: SpeculativeBatch | None = None  # from the first window on
        self.rows: dict[int, _Slot] = {}

    @property
    def free(self) -> list[int]:
        return [row for row in range(self.capacity) if row not in self.rows]

    @property
    def busy(self) -> bool:
        return bool(self.rows)

    def admit(self, windows: Sequence[tuple[Hashable, WindowRequest]]) -> None:
        """Start ``windows`` (key, window) in free rows; they decode from the next round on."""
        free = self.free
        if len(windows) > len(free):
            raise ValueError(f"{len(windows)} windows joined {len(free)} free rows")
        if not windows:
            return
        engine, rows = self.engine, free[: len(windows)]
        hidden, encoder_seconds = encode_audio(engine.target, [w.audio for _, w in windows])
        engine.decoder.begin_rows(rows, hidden)
        wanted = [w.language or self.options.language for _, w in windows]
        if engine.tokens.multilingual and any(lang is None for lang in wanted):
            detected = detect_language(engine.decoder, engine.tokens, rows)
            wanted = [lang or found for lang, found in zip(wanted, detected)]
        languages = [lang or "en" for lang in wanted]
        prompts = [engine.tokens.prompt(lang, self.options.task, self.options.timestamps, w.previous)
                   for lang, (_, w) in zip(languages, windows)]
        for row, prompt in zip(rows, prompts):
            self.rules.admit(row, len(prompt))
        self.verifier.cache.forget(rows)
        if self.rescorer is not None:
            self.rescorer.admit(rows, hidden)
            for row in rows:
                self.near_ties.rescored.pop(row, None)
        no_speech = engine._no_speech_probs(self.verifier, rows, prompts)
        if self.batch is None:
            self.batch = SpeculativeBatch(self.verifier, None, [engine.tokens.eot], self._decode_options(),
                                          self.controller, engine.device)
        budget = self.options.max_new_tokens
        for i, (row, (key, window), prompt) in enumerate(zip(rows, windows, prompts)):
            room = engine.decoder.max_positions - len(prompt)
            self.batch.add(row, prompt, min(budget or room, room))
            self.rows[row] = _Slot(key, prompt, languages[i], no_speech[i], encoder_seconds / len(windows),
                                   window.audio, hidden[i])
        if self.drafter is not None:
            self._admit_to_draft(rows)
        elif engine.draft is not None and self.controller.wants_draft():
            # A draft that measured slower than plain steps is not even started (its encoder is not free);
            # the policy is asked again as each window joins, and a draft started mid-batch catches up.
            with self.setup.phase("start"):
                self.drafter = engine.draft.start(DraftSetup(self.capacity, self.frames, self.rules,
                                                             self.options.task, engine.decoder.hidden_states))
            self.batch.start_drafting(self.drafter)
            self._admit_to_draft(list(self.rows))

    def _admit_to_draft(self, rows: list[int]) -> None:
        slots = [self.rows[row] for row in rows]
        with self.setup.phase("start"):
            seconds = self.drafter.admit(WindowBatch(rows, [s.audio for s in slots],
                                                     torch.stack([s.encoder_output for s in slots]),
                                                     [s.prompt for s in slots], [s.language for s in slots]))
        for slot in slots:
            slot.encoder_seconds += seconds / len(slots)

    def _decode_options(self) -> DecodeOptions:
        options = self.options
        return DecodeOptions(max_new_tokens=self.engine.decoder.max_positions, draft_length=self.max_draft,
                             adaptive_draft_length=options.adaptive_draft_length,
                             draft_confidence=self.confidence, temperature=options.temperature, seed=options.seed)

    def cancel(self, key: Hashable) -> None:
        """Drop the window ``key`` mid-decode (its caller gave up on it); its row is free at once."""
        for row, slot in list(self.rows.items()):
            if slot.key == key:
                self.batch.remove(row)
                del self.rows[row]

    def round(self) -> list[tuple[Hashable, DecodedWindow]]:
        """One round over every row decoding; returns the windows it finished, as (key, window)."""
        finished = self.batch.round()
        if not finished:
            return []
        engine, options = self.engine, self.options
        threshold = options.logprob_if_no_speech_above
        slots = {row: self.rows.pop(row) for row, _ in finished}
        scored = [row for row, _ in finished if threshold is None or slots[row].no_speech_prob > threshold]
        decoded = dict(finished)
        logprobs = engine._avg_logprobs(self.verifier, self.rules, {r: slots[r].prompt for r in scored},
                                        [decoded[r].tokens for r in scored], scored)
        out = []
        for row, result in finished:
            slot = slots[row]
            kept = [(t, d) for t, d in zip(result.tokens, result.from_draft) if t != engine.tokens.eot]
            tokens = tuple(t for t, _ in kept)
            rescored = self.near_ties.rescored[row] if self.near_ties is not None else 0
            stats = replace(result.stats, encoder_seconds=slot.encoder_seconds, rescored=rescored)
            out.append((slot.key, DecodedWindow(tokens, engine.text(tokens), slot.language, stats, slot.no_speech_prob,
                                                logprobs.get(row), result.stopped,
                                                slot.encoder_output if options.return_encoder_output else None,
                                                from_draft=tuple(d for _, d in kept))))
        return out

    def close(self) -> None:
        """No more windows: the draft-length policy learns what starting the draft cost these rounds."""
        if self.batch is not None:
            self.batch.finish(self.setup.seconds.get("start", 0.0))
