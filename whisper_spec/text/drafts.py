"""The three kinds of text draft, each turned into a core ``Drafter`` for a batch of prompts.

1. ``ModelDraft``: a smaller causal LM with the target's tokenizer (Qwen2.5-Coder 0.5B for 1.5B); the
   core ``ModelDrafter`` runs it k steps per round over its own position-addressed cache.
2. ``CrossTokenizerDraft``: a causal LM with another tokenizer (SmolLM2 for Qwen); it sees the same
   request rendered with its own tokenizer (its own chat template), and its tokens travel as text
   (``core.text_bridge``).
3. ``PromptLookupDraft``: no model at all. The tokens that followed the latest earlier occurrence of the
   sequence's last n-gram are proposed (Saxena 2023, "prompt lookup decoding"): free to draft, and
   right surprisingly often when the output copies from the prompt (code edits, summaries, quotes).
4. ``LookupThenModelDraft`` (spec ``prompt-lookup+<model>``): prompt lookup where it finds a match,
   the draft model elsewhere, row by row: copying costs nothing, and the model covers new text.

Whatever a draft proposes, the target decides, so every kind is lossless; the kinds differ in cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from whisper_spec.core.model_roles import ModelDrafter
from whisper_spec.core.protocols import Drafter, DraftRequest, Proposal
from whisper_spec.core.text_bridge import TextBridgeDrafter, tokenization
from whisper_spec.text.checkpoints import TextCheckpoint, load_text_model
from whisper_spec.text.model import CachedCausalLM

Messages = Sequence[Mapping[str, str]]  # chat messages: {"role": "user", "content": "..."}, ...
PromptSource = str | Messages  # raw text to continue, or a chat to answer
PROMPT_LOOKUP = "prompt-lookup"  # the draft spec of the model-free drafter
# A draft model scores only the first this-many ids of its vocabulary (and its stop ids). Byte-level BPE
# numbers its merges by frequency, so the first ids cover most tokens of prose and code, while the output
# projection is a large share of the bytes a small model's step reads
# (evaluation/results/measurements-behind-the-defaults.md).
DRAFT_OUTPUT_VOCABULARY = 32768


def render_prompt(tokenizer, source: PromptSource) -> list[int]:
    """Token ids of a prompt: raw text as is, chat messages through the tokenizer's chat template."""
    if isinstance(source, str):
        return list(tokenizer(source).input_ids)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this model's tokenizer has no chat template: pass the prompt as plain text")
    text = tokenizer.apply_chat_template([dict(m) for m in source], add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


@dataclass(frozen=True)
class PromptBatch:
    """What every draft may need to start on a batch of prompts."""

    sources: Sequence[PromptSource]  # B prompts as the user gave them
    prompts: Sequence[Sequence[int]]  # B target prompt ids (rendered with the target's tokenizer)


class TextDraft(Protocol):
    # True when the draft ends its own rounds on low confidence (``DraftRequest.min_confidence``): a model
    stops_itself: bool

    def start(self, batch: PromptBatch) -> Drafter:
        """A drafter for these prompts (draft caches are reset)."""
        ...


class PromptLookupDrafter:
    """Proposes the continuation of the latest earlier occurrence of each sequence's last n-gram.

    Longer n-grams are tried first (``max_ngram`` down to ``min_ngram``): a longer match predicts better.
    Proposals are deterministic, so the sampling rule treats them as one-hot.
    """

    def __init__(self, max_ngram: int = 4, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, request: DraftRequest) -> Proposal:
        return Proposal(tokens=[self.lookup(list(s), request.k) for s in request.sequences], forward_calls=0)

    def lookup(self, sequence: list[int], k: int) -> list[int]:
        """Up to k ids that followed the latest earlier occurrence of the longest matching suffix n-gram."""
        length = len(sequence)
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            suffix = sequence[length - n:]
            last = suffix[-1]
            # scan right to left: the latest occurrence is the likeliest to continue the same way
            for end in range(length - 2, n - 2, -1):
                if sequence[end] == last and sequence[end - n + 1: end + 1] == suffix:
                    return sequence[end + 1: end + 1 + k]
        return []


@dataclass
class PromptLookupDraft:
    max_ngram: int = 4  # a single shared token is weak evidence: match two to four
    min_ngram: int = 2
    stops_itself: bool = False  # a lookup has no probabilities: the adaptive length bounds it

    def start(self, batch: PromptBatch) -> Drafter:
        return PromptLookupDrafter(self.max_ngram, self.min_ngram)


def _draft_model(checkpoint: TextCheckpoint, output_vocabulary: int | None, int8: bool) -> CachedCausalLM:
    vocab = checkpoint.model.get_output_embeddings().weight.shape[0]
    output_ids = None
    if output_vocabulary is not None and output_vocabulary < vocab:
        output_ids = sorted(set(range(output_vocabulary)) | set(checkpoint.stop_token_ids))
    # a draft runs one token at a time: the GEMV path needs no packed copy of its weights
    return CachedCausalLM(checkpoint.model, pack_weights=False, output_ids=output_ids, int8=int8)


class ModelDraft:
    """A smaller causal LM with the target's tokenizer."""

    stops_itself = True

    def __init__(self, checkpoint: TextCheckpoint, output_vocabulary: int | None = DRAFT_OUTPUT_VOCABULARY,
                 int8: bool = True):
        self.checkpoint = checkpoint
        self.model = _draft_model(checkpoint, output_vocabulary, int8)

    def start(self, batch: PromptBatch) -> Drafter:
        self.model.begin(len(batch.prompts))
        return ModelDrafter(self.model, len(batch.prompts), stop_token_ids=self.checkpoint.stop_token_ids)


class CrossTokenizerDraft:
    """A causal LM with another tokenizer; proposals travel as text."""

    stops_itself = True

    def __init__(self, checkpoint: TextCheckpoint, target: TextCheckpoint,
                 output_vocabulary: int | None = DRAFT_OUTPUT_VOCABULARY, int8: bool = True):
        self.checkpoint = checkpoint
        self.target = target
        self.model = _draft_model(checkpoint, output_vocabulary, int8)

    def start(self, batch: PromptBatch) -> Drafter:
        draft_prompts = [render_prompt(self.checkpoint.tokenizer, s) for s in batch.sources]
        self.model.begin(len(draft_prompts))
        inner = ModelDrafter(self.model, len(draft_prompts), stop_token_ids=self.checkpoint.stop_token_ids)
        target_stops = self.target.stop_token_ids
        eos = self.target.tokenizer.eos_token_id
        return TextBridgeDrafter(
            inner, tokenization(self.checkpoint.tokenizer, self.checkpoint.stop_token_ids),
            tokenization(self.target.tokenizer, target_stops), eos if eos in target_stops else target_stops[0],
            draft_prompts, [len(p) for p in batch.prompts])


class LookupThenModelDrafter:
    """Per row: prompt lookup's proposal when it has one, otherwise the draft model's."""

    def __init__(self, lookup: PromptLookupDrafter, model: Drafter):
        self.lookup = lookup
        self.model = model

    def propose(self, request: DraftRequest) -> Proposal:
        tokens = [self.lookup.lookup(list(s), request.k) for s in request.sequences]
        missing = [i for i, t in enumerate(tokens) if not t]
        if not missing:
            return Proposal(tokens=tokens, forward_calls=0)
        inner = self.model.propose(replace(request, rows=request.rows[missing],
                                           sequences=[request.sequences[i] for i in missing]))
        for i, proposal in zip(missing, inner.tokens):
            tokens[i] = proposal
        return Proposal(tokens=tokens, forward_calls=inner.forward_calls)


class LookupThenModelDraft:
    stops_itself = True  # where lookup finds nothing, the model drafts and stops itself

    def __init__(self, model: TextDraft, lookup: PromptLookupDraft | None = None):
        self.model = model
        self.lookup = lookup or PromptLookupDraft()

    def start(self, batch: PromptBatch) -> Drafter:
        lookup = self.lookup.start(batch)
        return LookupThenModelDrafter(lookup, self.model.start(batch))


def resolve_text_draft(spec: str, target: TextCheckpoint,
                       output_vocabulary: int | None = DRAFT_OUTPUT_VOCABULARY, int8: bool = True) -> TextDraft:
    """Turn a draft spec into a draft for ``target``.

    Specs: ``prompt-lookup`` (model-free), any name ``load_text_model`` resolves (a model with the
    target's vocabulary becomes a ``ModelDraft``, one with another tokenizer a ``CrossTokenizerDraft``),
    or ``prompt-lookup+<name>`` for lookup first and that model where lookup finds nothing. A draft model
    scores only its first ``output_vocabulary`` ids (None: all of them) and, on a CPU in float32, runs on
    int8 weights unless ``int8`` is False (its steps cost about a third; output is unchanged).
    """
    if spec == PROMPT_LOOKUP:
        return PromptLookupDraft()
    if spec.startswith(PROMPT_LOOKUP + "+"):
        return LookupThenModelDraft(resolve_text_draft(spec[len(PROMPT_LOOKUP) + 1:], target, output_vocabulary,
                                                       int8))
    weight = target.model.get_input_embeddings().weight
    draft = load_text_model(spec, device=weight.device, dtype=weight.dtype)
    if draft.tokenizer.get_vocab() == target.tokenizer.get_vocab():
        return ModelDraft(draft, output_vocabulary, int8)
    return CrossTokenizerDraft(draft, target, output_vocabulary, int8)
