"""The three kinds of Whisper draft, each turned into a core ``Drafter`` for a batch of windows.

1. ``SharedEncoderDraft``: a decoder that reads the TARGET's encoder outputs (distil-whisper's design, or
   some of the target's own decoder layers); only its small decoder runs.
2. ``SeparateEncoderDraft``: a smaller Whisper with the same tokenizer and its own encoder, run once per
   window.
3. ``CrossTokenizerDraft``: a Whisper with another tokenizer (English-only tiny.en for multilingual base):
   its tokens travel to the target as text and are re-tokenized, and back.

Whatever the draft proposes, the target decides, so every kind is lossless; the kinds differ in cost.
A draft decoder with fixed-shape steps (CUDA graphs) runs each greedy round as one computation
(``RoundDrafter``).
``DRAFT_INT8`` runs draft decoders on int8 weights on a CPU: a draft step reads its weights once, so a
quarter of the bytes is most of a quarter of the time, and only the proposals can change. It is off by
default: with it, tiny.en drafting for base measured 1.19-1.22x on full 30-s windows but 0.91-0.95x on
short clips, where the adaptive length kept the cheaper draft on although its own encoder makes it lose
(the evaluation's 35 short files: 0.94x against 1.00x without); see evaluation/results/distill-base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from whisper_spec.core.model_roles import ModelDrafter
from whisper_spec.core.protocols import Drafter, DraftRequest, Proposal
from whisper_spec.core.text_bridge import TextBridgeDrafter, tokenization
from whisper_spec.whisper.decoder import MAX_STATIC_TOKENS, CachedWhisperDecoder
from whisper_spec.whisper.features import encode_audio
from whisper_spec.whisper.logit_rules import SuppressionRules, suppress_at_positions
from whisper_spec.whisper.prompts import decoder_prompt
from whisper_spec.whisper.timestamps import TimestampRules, timestamp_begin_id

DRAFT_INT8 = False  # True: draft decoders on int8 weights where supported (CPU, float32); targets never


@dataclass(frozen=True)
class WindowBatch:
    """What every draft may need to start on a batch of windows."""

    audio: Sequence[np.ndarray]  # B mono 16 kHz windows, each at most 30 s
    target_encoder_hidden: Tensor  # [B, S, D] the target's encoder outputs
    prompts: Sequence[Sequence[int]]  # B target decoder prompts
    rules: SuppressionRules | TimestampRules  # the target's logit rules for these prompts
    language: Sequence[str]  # B language codes (for a multilingual draft's own prompt)
    task: str
    # [B, P, D] the target's final hidden state at every position it has read, kept up to date by the
    # verify passes; recorded only for a draft whose ``reads_target_states`` is True
    target_states: Tensor | None = None


class WhisperDraft(Protocol):
    kind: str  # "shared-encoder", "separate-encoder" or "cross-tokenizer"
    # optional ``draft_confidence: float``: the draft's own default for ``WindowOptions.draft_confidence``

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        """A drafter for these windows, and the seconds spent on the draft's own encoder."""
        ...


def _stop_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids("<|endoftext|>")]


class RoundDrafter:
    """A ``ModelDrafter`` whose greedy rounds run as one fixed-shape computation (one CUDA graph on a GPU).

    Step by step, each draft token costs a host round trip (logit rules, argmax, reading the token
    back) that on a GPU outlasts the small draft's own step. Here the decoder chooses all k tokens on
    the device (``CachedWhisperDecoder.greedy_round``) and the host reads them once; stop tokens and the
    confidence threshold then cut each row's draft exactly where the step-by-step drafter stops it.
    Sampling, rounds longer than ``MAX_STATIC_TOKENS`` to catch up, and anything else go step by step,
    through the same cache.
    """

    def __init__(self, inner: ModelDrafter, decoder: CachedWhisperDecoder, rules: SuppressionRules):
        self.inner = inner
        self.decoder = decoder
        self.rule_inputs = rules.tensors(decoder.output_weight.shape[0], decoder.device)

    def propose(self, request: DraftRequest) -> Proposal:
        cache = self.inner.cache
        tokens, start, last = cache.pending(request.rows, request.sequences, [1] * len(request.sequences))
        if request.temperature > 0 or request.k < 1 or tokens.shape[1] > MAX_STATIC_TOKENS:
            return self.inner.propose(request)
        ids, q = self.decoder.greedy_round(request.rows, tokens, start, last[:, 0], request.k,
                                           suppress_at_positions, self.rule_inputs)
        # the same running product, in the same order, as the step-by-step drafter's confidence
        going_on = (q.cumprod(dim=1) >= request.min_confidence).tolist() if request.min_confidence > 0 else None
        drafts = []
        for i, (row, sequence, chosen) in enumerate(zip(request.rows.tolist(), request.sequences, ids.tolist())):
            draft = []
            for j, token in enumerate(chosen):
                draft.append(token)
                if token in self.inner.stop_token_ids or (going_on is not None and not going_on[i][j]):
                    break
            drafts.append(draft)
            cache.cached[row] = list(sequence) + chosen[:-1]
        return Proposal(tokens=drafts, forward_calls=request.k)


def _model_drafter(decoder: CachedWhisperDecoder, batch: WindowBatch, stop_token_ids: Sequence[int]) -> Drafter:
    """A drafter for a draft decoder that shares the target's tokenizer and rules."""
    drafter = ModelDrafter(decoder, len(batch.prompts), rules=batch.rules, stop_token_ids=stop_token_ids)
    if decoder.static_steps and isinstance(batch.rules, SuppressionRules):
        return RoundDrafter(drafter, decoder, batch.rules)
    return drafter


class SharedEncoderDraft:
    kind = "shared-encoder"

    def __init__(self, decoder: CachedWhisperDecoder, eot_token_id: int):
        self.decoder = decoder
        self.eot_token_id = eot_token_id

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        self.decoder.begin(batch.target_encoder_hidden)
        return _model_drafter(self.decoder, batch, [self.eot_token_id]), 0.0


class SeparateEncoderDraft:
    kind = "separate-encoder"

    def __init__(self, checkpoint, static_steps: bool = False):
        self.checkpoint = checkpoint
        self.decoder = CachedWhisperDecoder(checkpoint.model.model.decoder, int8=DRAFT_INT8, static_steps=static_steps)

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        hidden, seconds = encode_audio(self.checkpoint, batch.audio)
        self.decoder.begin(hidden)
        return _model_drafter(self.decoder, batch, _stop_ids(self.checkpoint.tokenizer)), seconds


class CrossTokenizerDraft:
    kind = "cross-tokenizer"

    def __init__(self, checkpoint, target_tokenizer, static_steps: bool = False):
        self.checkpoint = checkpoint
        self.target_tokenizer = target_tokenizer
        self.decoder = CachedWhisperDecoder(checkpoint.model.model.decoder, int8=DRAFT_INT8, static_steps=static_steps)

    def start(self, batch: WindowBatch) -> tuple[Drafter, float]:
        hidden, seconds = encode_audio(self.checkpoint, batch.audio)
        self.decoder.begin(hidden)
        config = self.checkpoint.generation_config
        timestamps = isinstance(batch.rules, TimestampRules)
        prompts = [decoder_prompt(config, language, batch.task, timestamps) for language in batch.language]
        draft_tokenizer = self.checkpoint.tokenizer
        draft_eot = draft_tokenizer.convert_tokens_to_ids("<|endoftext|>")
        target_eot = self.target_tokenizer.convert_tokens_to_ids("<|endoftext|>")
        rules: SuppressionRules | TimestampRules = SuppressionRules(
            prompt_lengths=tuple(len(p) for p in prompts),
            suppress_tokens=tuple(config.suppress_tokens or ()),
            begin_suppress_tokens=tuple(config.begin_suppress_tokens or ()))
        shared_ids = {}
        if timestamps:
            # the draft writes its own timestamps under the same grammar; they cross by offset
            draft_begin, target_begin = timestamp_begin_id(draft_tokenizer), timestamp_begin_id(self.target_tokenizer)
            rules = TimestampRules(rules, draft_begin, config.no_timestamps_token_id, draft_eot,
                                   batch.rules.max_initial_timestamp_index)
            count = min(len(draft_tokenizer) - draft_begin, len(self.target_tokenizer) - target_begin)
            shared_ids = {target_begin + i: draft_begin + i for i in range(count)}
        inner = ModelDrafter(self.decoder, len(prompts), rules=rules, stop_token_ids=[draft_eot])
        bridge = TextBridgeDrafter(inner, tokenization(draft_tokenizer, [draft_eot]),
                                   tokenization(self.target_tokenizer, [target_eot]), target_eot,
                                   prompts, [len(p) for p in batch.prompts], shared_ids)
        return bridge, seconds


def _same_encoder(a, b) -> bool:
    """True when two checkpoints' encoders are bit-identical (distil-whisper keeps its teacher's)."""
    pa, pb = dict(a.model.model.encoder.named_parameters()), dict(b.model.model.encoder.named_parameters())
    return pa.keys() == pb.keys() and all(pa[k].shape == pb[k].shape and torch.equal(pa[k], pb[k].to(pa[k].device))
                                          for k in pa)


def resolve_draft(spec: str, target, device=None, dtype=None, static_steps: bool = False) -> WhisperDraft:
    """Turn a draft spec into a draft for ``target`` (a ``WhisperCheckpoint``).

    Specs: ``layers:0,5`` (the target's own decoder layers, reading its encoder outputs), a distilled
    draft (a ``.pt`` file made by ``whisper-spec distill``, a shipped one's short name such as
    ``base-distilled``, or ``distilled`` for the one shipped for the target), or any name
    ``load_whisper`` resolves. A checkpoint with the target's tokenizer becomes a shared-encoder draft
    when its encoder is bit-identical to the target's, else a separate-encoder draft; a checkpoint with
    another tokenizer becomes a cross-tokenizer draft. ``static_steps``: the draft decoder's steps run as
    fixed-shape steps, CUDA graphs on a GPU (distilled drafts, made for CPUs, ignore it).
    """
    from whisper_spec.distill.draft import DistilledDraft, find_draft_file
    from whisper_spec.whisper.checkpoints import load_whisper

    distilled = find_draft_file(spec, target.name)
    if distilled is not None:
        return DistilledDraft.load(distilled, target)
    eot = target.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if spec.startswith("layers:"):
        decoder = target.model.model.decoder
        count = len(decoder.layers)
        try:
            layers = [int(x) % count for x in spec.split(":", 1)[1].split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"draft spec {spec!r}: expected layers:i,j,... with integer layer indices") from None
        if not layers:
            raise ValueError(f"draft spec {spec!r} names no layers")
        return SharedEncoderDraft(CachedWhisperDecoder(decoder, layers=layers, int8=DRAFT_INT8,
                                                       static_steps=static_steps), eot)
    weight = target.model.model.decoder.embed_tokens.weight
    draft = load_whisper(spec, device=device or weight.device, dtype=dtype or weight.dtype)
    if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        return CrossTokenizerDraft(draft, target.tokenizer, static_steps)
    if _same_encoder(draft, target):
        return SharedEncoderDraft(CachedWhisperDecoder(draft.model.model.decoder, int8=DRAFT_INT8,
                                                       static_steps=static_steps), eot)
    return SeparateEncoderDraft(draft, static_steps)
