"""``generate()``: the one public entry point for text LLMs, shared by the CLI and the benchmark.

The same draft/verify core that drives Whisper runs a causal LM here: the target scores every draft
token in one pass over its own position-addressed cache, and greedy output is token-identical to the
target's own greedy decoding (sampling keeps the target's distribution).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from whisper_spec.core.loop import DecodeOptions
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.text.checkpoints import load_text_model
from whisper_spec.text.drafts import PROMPT_LOOKUP, PromptSource, TextDraft, resolve_text_draft
from whisper_spec.text.engine import SpeculativeLM

DEFAULT = "default"  # draft=DEFAULT: the best measured draft for the target, if one is known
DEFAULT_TARGET = "qwen2.5-coder-1.5b"
# Default drafts per bundled target: for the 1.5B, lookup-then-0.5B measured best over code and chat
# (evaluation/results/measurements-behind-the-defaults.md); the others are unmeasured, and prompt lookup
# costs them nothing.
DEFAULT_DRAFTS: dict[str, str] = {
    "qwen2.5-coder-1.5b": "prompt-lookup+qwen2.5-coder-0.5b",
    "qwen2.5-coder-0.5b": PROMPT_LOOKUP,
    "smollm2-135m": PROMPT_LOOKUP,
}

TextCallback = Callable[[str], None]  # receives each newly generated piece of text, in order


@dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int = 256  # the most tokens to generate (a stop token included)
    temperature: float = 0.0  # 0: greedy, token-identical to the target; > 0: sampling, same distribution
    draft_length: int = 20  # the most draft tokens per round (a cap: the draft stops itself, see below)
    adaptive_draft_length: bool = True  # switch drafting off while plain steps measure faster
    # a draft model ends its round once the probability it gives its whole proposal falls below this
    # (0: always draft_length tokens, then chosen from measured acceptance and costs)
    draft_confidence: float = 0.3
    seed: int | None = None  # random seed for temperature > 0

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(**{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Generation:
    text: str  # the generated text (prompt and stop token excluded)
    tokens: tuple[int, ...]  # target token ids of ``text``
    prompt_tokens: int  # length of the rendered prompt, in target tokens
    finished: bool  # True: the model ended its answer; False: max_new_tokens cut it off
    stats: SpeculationStats
    target: str  # what generated it
    draft: str | None

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens (a stop token included) per second of the whole call."""
        return self.stats.tokens / self.stats.wall_seconds if self.stats.wall_seconds else 0.0


@functools.lru_cache(maxsize=2)
def load_text_engine(target: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> SpeculativeLM:
    """A loaded target without a draft, kept for the process (its packed weights are built once)."""
    return SpeculativeLM(load_text_model(target, device=device, dtype=dtype))


@functools.lru_cache(maxsize=4)
def load_text_draft(target: str, draft: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TextDraft:
    """A draft for ``target`` (see ``resolve_text_draft``), kept for the process."""
    return resolve_text_draft(draft, load_text_engine(target, device, dtype).checkpoint)


@functools.lru_cache(maxsize=4)
def load_text_pipeline(target: str, draft: str | None, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> SpeculativeLM:
    """The target with this draft, kept for the process: its draft-length controller learns across calls."""
    engine = load_text_engine(target, device, dtype)
    return engine.with_draft(load_text_draft(target, draft, device, dtype) if draft else None)


class _TextStream:
    """Turns committed token ids into text pieces for a callback, holding back incomplete characters."""

    def __init__(self, tokenizer, stop_token_ids, callback: TextCallback):
        self.tokenizer = tokenizer
        self.stops = frozenset(stop_token_ids)
        self.callback = callback
        self.ids: list[int] = []
        self.sent = 0

    def __call__(self, row: int, tokens: list[int]) -> None:
        self.ids.extend(t for t in tokens if t not in self.stops)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # a byte-level token can end inside a multi-byte character: wait for the rest of it
        if text.endswith("\ufffd") and tokens and tokens[-1] not in self.stops:
            return
        if len(text) > self.sent:
            self.callback(text[self.sent:])
            self.sent = len(text)


def generate(
    prompt: PromptSource,
    target: str | None = None,
    draft: str | None = DEFAULT,
    options: GenerateOptions | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_text: TextCallback | None = None,
    **overrides,
) -> Generation:
    """Generate text with speculative decoding.

    Args:
        prompt: raw text to continue, or chat messages (``[{"role": "user", "content": ...}, ...]``)
            rendered through the target's chat template (and the draft's own, for another tokenizer).
        target: the model whose output you get (default ``qwen2.5-coder-1.5b``, offline); a bundled
            name, a ``.gguf`` path, a local checkpoint directory or a hub id.
        draft: ``"prompt-lookup"`` (model-free), a model name (same tokenizer or another one), ``None``
            for the target alone (the baseline), or ``DEFAULT``: the best measured draft for the target.
        options: decoding options; keyword ``overrides`` replace single fields (``max_new_tokens=64``).
        device, dtype: where and in what precision to run.
        on_text: called with each new piece of text as soon as it is committed (streaming).
    """
    options = replace(options or GenerateOptions(), **overrides)
    target = target or DEFAULT_TARGET
    if draft == DEFAULT:
        draft = DEFAULT_DRAFTS.get(target, PROMPT_LOOKUP)
    engine = load_text_pipeline(target, draft, device, dtype)
    started = time.perf_counter()  # loading excluded: it happens once per process
    checkpoint = engine.checkpoint
    stream = _TextStream(checkpoint.tokenizer, checkpoint.stop_token_ids, on_text) if on_text else None
    result = engine.decode([prompt], options.decode_options(), on_tokens=stream)
    row = result.rows[0]
    tokens = tuple(t for t in row.tokens if t not in checkpoint.stop_token_ids)
    text = checkpoint.tokenizer.decode(tokens, skip_special_tokens=True)
    if stream is not None and len(text) > stream.sent:
        on_text(text[stream.sent:])
    stats = replace(row.stats, wall_seconds=time.perf_counter() - started)
    return Generation(text, tokens, len(engine.prompt_ids(prompt)), row.stopped, stats, target, draft)
