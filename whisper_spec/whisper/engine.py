"""A loaded Whisper target (and optional draft) that decodes batches of 30-second windows.

This is where the Whisper adapters meet the model-agnostic core: the encoder runs once per window,
the target's cached decoder becomes a ``ModelVerifier``, the draft becomes a ``Drafter``, and
``core.loop.speculative_decode`` does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from whisper_spec.core.draft_length import ControllerMemory
from whisper_spec.core.loop import DecodeOptions, speculative_decode
from whisper_spec.core.model_roles import ModelVerifier, NearTieRule
from whisper_spec.core.stats import SpeculationStats, Stopwatch
from whisper_spec.whisper.checkpoints import WhisperCheckpoint
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts import WhisperDraft, WindowBatch
from whisper_spec.whisper.features import encode_audio
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


class SpeculativeWhisper:
    """A target checkpoint with an optional draft; ``draft=None`` is the target alone (the baseline)."""

    def __init__(self, target: WhisperCheckpoint, draft: WhisperDraft | None = None, static_steps: bool = False):
        """``static_steps``: the target's decoding passes run as fixed-shape steps, replayed as CUDA graphs
        on a GPU (see ``CachedWhisperDecoder``); a draft decoder chooses for itself."""
        self.target = target
        self.tokens = target.tokens
        self.draft = draft
        self.draft_lengths = ControllerMemory()  # what this pair costs here, learned across windows
        self.decoder = CachedWhisperDecoder(target.model.model.decoder, static_steps=static_steps)
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
        hidden, encoder_seconds = encode_audio(self.target, audio)
        self.decoder.begin(hidden, record_hidden=self.draft is not None and self.draft.reads_target_states)
        batch = len(audio)
        previous = previous if previous is not None else [()] * batch
        wanted = list(languages) if languages is not None else [options.language] * batch
        if len(previous) != batch or len(wanted) != batch:
            raise ValueError(f"{batch} windows need {batch} previous-text prompts and languages, "
                             f"got {len(previous)} and {len(wanted)}")
        if self.tokens.multilingual and any(lang is None for lang in wanted):
            detected = detect_language(self.decoder, self.tokens, batch)
            wanted = [lang or found for lang, found in zip(wanted, detected)]
        languages = [lang or "en" for lang in wanted]
        prompts = [self.tokens.prompt(lang, options.task, options.timestamps, prev)
                   for lang, prev in zip(languages, previous)]
        rules = self.tokens.rules([len(p) for p in prompts], options.timestamps)
        margin = options.near_tie_margin if options.near_tie_margin is not None else default_margin(self.decoder.dtype)
        near_ties = None
        if margin > 0 and options.temperature == 0:
            if "decoder" not in self._exact:  # shared with engines made by with_draft (same dict)
                self._exact["decoder"] = ExactDecoder(self.target.model.model.decoder)
            near_ties = NearTieRule(margin, self._exact["decoder"].rescorer(hidden))
        verifier = ModelVerifier(self.decoder, batch, rules, near_ties)
        no_speech = self._no_speech_probs(verifier, prompts)
        confidence, max_draft = self._draft_limits(options)
        # A self-stopping draft is only switched on or off, from its measured round rate, and it agrees less
        # in the timestamp mode (long-form windows): one bad long-form window had switched it off for the
        # short ones too. Other drafts share one policy: apart, tiny.en ran its own encoder to relearn each mode.
        gated = confidence > 0
        controller = self.draft_lengths.get(max_draft, options.adaptive_draft_length, options.temperature > 0, gated,
                                            context=("timestamps" if options.timestamps else "text") if gated else None)
        drafter, setup = None, Stopwatch(self.device)
        # a draft that measured slower than plain steps is not even started (its encoder is not free)
        if self.draft is not None and controller.wants_draft():
            # The policy prices all of a start, not only a separate encoder: a shared-encoder draft's
            # cross-attention keys and values over 1500 frames, unpriced, kept base drafting for itself
            # on short clips at a loss.
            with setup.phase("start"):
                drafter, draft_encoder_seconds = self.draft.start(
                    WindowBatch(audio, hidden, prompts, rules, languages, options.task, self.decoder.hidden_states))
            encoder_seconds += draft_encoder_seconds
        budget = self.decoder.max_positions - max(len(p) for p in prompts)
        decode_options = DecodeOptions(
            max_new_tokens=min(options.max_new_tokens or budget, budget),
            draft_length=max_draft if drafter is not None else 0,
            adaptive_draft_length=options.adaptive_draft_length, draft_confidence=confidence,
            temperature=options.temperature, seed=options.seed)
        result = speculative_decode(verifier, drafter, prompts, [self.tokens.eot], decode_options,
                                    device=self.device, controller=controller,
                                    draft_setup_seconds=setup.seconds["start"])
        threshold = options.logprob_if_no_speech_above
        scored = [i for i in range(batch) if threshold is None or no_speech[i] > threshold]
        logprobs = self._avg_logprobs(verifier, rules, prompts, [result.rows[i].tokens for i in scored], scored)
        windows = []
        share = encoder_seconds / batch
        for i, (row, language) in enumerate(zip(result.rows, languages)):
            kept = [(t, d) for t, d in zip(row.tokens, row.from_draft) if t != self.tokens.eot]
            tokens = tuple(t for t, _ in kept)
            stats = replace(row.stats, encoder_seconds=share, rescored=near_ties.rescored[i] if near_ties else 0)
            windows.append(DecodedWindow(tokens, self.text(tokens), language, stats,
                                         no_speech[i], logprobs.get(i), row.stopped,
                                         hidden[i] if options.return_encoder_output else None,
                                         from_draft=tuple(d for _, d in kept)))
        return windows

    def _draft_limits(self, options: WindowOptions) -> tuple[float, int]:
        """(confidence threshold, largest k) of this decode: the options', else the draft's own (0 without one)."""
        if self.draft is None:
            return 0.0, 0
        confidence = self.draft.draft_confidence if options.draft_confidence is None else options.draft_confidence
        return confidence, self.draft.draft_length if options.draft_length is None else options.draft_length

    def _no_speech_probs(self, verifier: ModelVerifier, prompts: Sequence[Sequence[int]]) -> list[float]:
        """Whisper's no-speech probability per row, from the target's raw scores after <|startoftranscript|>.

        Runs the prompts through the verifier's cache, which the first decoding step then reuses.
        """
        if self.tokens.no_speech is None:
            return [0.0] * len(prompts)
        after_sot = [len(p) - p.index(self.tokens.sot) for p in prompts]
        logits = verifier.cache.logits(torch.arange(len(prompts)), prompts, after_sot)[:, 0]
        return torch.softmax(logits.float(), dim=-1)[:, self.tokens.no_speech].tolist()

    def _avg_logprobs(self, verifier: ModelVerifier, rules, prompts: Sequence[Sequence[int]],
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
