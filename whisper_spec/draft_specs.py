"""Draft specs, the strings users write (``--draft tiny.en``, ``layers:0,5``, ``distilled``), as drafts.

Here the Whisper adapters meet distillation's checkpoint format: a spec may name a model any loader
resolves, some of the target's own decoder layers, or a distilled draft file (shipped or made by
``whisper-spec distill``).
"""

from __future__ import annotations

import torch

from whisper_spec.distill.checkpoint import find_draft_file, load_draft
from whisper_spec.whisper.checkpoints import WhisperCheckpoint, load_whisper
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts import WhisperDraft
from whisper_spec.whisper.drafts.cross_tokenizer import CrossTokenizerDraft
from whisper_spec.whisper.drafts.distilled import DistilledDraft
from whisper_spec.whisper.drafts.separate_encoder import SeparateEncoderDraft
from whisper_spec.whisper.drafts.shared_encoder import SharedEncoderDraft


def resolve_draft(spec: str, target: WhisperCheckpoint, device=None, dtype=None,
                  static_steps: bool = False) -> WhisperDraft:
    """Turn a draft spec into a draft for ``target``.

    Specs: ``layers:0,5`` (the target's own decoder layers, reading its encoder outputs), a distilled
    draft (a ``.pt`` file made by ``whisper-spec distill``, a shipped one's short name such as
    ``base-distilled``, or ``distilled`` for the one shipped for the target), or any name
    ``load_whisper`` resolves. A checkpoint with the target's tokenizer becomes a shared-encoder draft
    when its encoder is bit-identical to the target's, else a separate-encoder draft; a checkpoint with
    another tokenizer becomes a cross-tokenizer draft. ``static_steps``: the draft decoder's steps run as
    fixed-shape steps, CUDA graphs on a GPU (distilled drafts, made for CPUs, ignore it).
    """
    distilled = find_draft_file(spec, target.name)
    if distilled is not None:
        return DistilledDraft(load_draft(distilled, target), target)
    if spec.startswith("layers:"):
        decoder = target.model.model.decoder
        return SharedEncoderDraft(CachedWhisperDecoder(decoder, layers=_layers(spec, len(decoder.layers)),
                                                       static_steps=static_steps), target.tokens.eot)
    weight = target.model.model.decoder.embed_tokens.weight
    draft = load_whisper(spec, device=device or weight.device, dtype=dtype or weight.dtype)
    if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        return CrossTokenizerDraft(draft, target, static_steps)
    if _same_encoder(draft, target):
        return SharedEncoderDraft(CachedWhisperDecoder(draft.model.model.decoder, static_steps=static_steps),
                                  target.tokens.eot)
    return SeparateEncoderDraft(draft, static_steps)


def _layers(spec: str, count: int) -> list[int]:
    """``layers:i,j,...`` -> layer indices (negative ones count from the last layer)."""
    try:
        layers = [int(x) % count for x in spec.split(":", 1)[1].split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"draft spec {spec!r}: expected layers:i,j,... with integer layer indices") from None
    if not layers:
        raise ValueError(f"draft spec {spec!r} names no layers")
    return layers


def _same_encoder(a: WhisperCheckpoint, b: WhisperCheckpoint) -> bool:
    """True when two checkpoints' encoders are bit-identical (distil-whisper keeps its teacher's)."""
    pa, pb = dict(a.model.model.encoder.named_parameters()), dict(b.model.model.encoder.named_parameters())
    return pa.keys() == pb.keys() and all(pa[k].shape == pb[k].shape and torch.equal(pa[k], pb[k].to(pa[k].device))
                                          for k in pa)
