"""Speculative decoding of a causal LM: a target, an optional draft, and the core loop between them."""

from __future__ import annotations

from collections.abc import Sequence

from whisper_spec.core.draft_length import ControllerMemory
from whisper_spec.core.loop import DecodeOptions, DecodeResult, TokenCallback, speculative_decode
from whisper_spec.core.model_roles import ModelVerifier
from whisper_spec.text.checkpoints import TextCheckpoint
from whisper_spec.text.drafts import PromptBatch, PromptSource, TextDraft, render_prompt
from whisper_spec.text.model import CachedCausalLM


class SpeculativeLM:
    """A target causal LM over our incremental forward, and optionally a draft."""

    def __init__(self, checkpoint: TextCheckpoint, draft: TextDraft | None = None,
                 model: CachedCausalLM | None = None):
        self.checkpoint = checkpoint
        self.draft = draft
        self.model = model or CachedCausalLM(checkpoint.model)
        self.draft_lengths = ControllerMemory()  # what this pair costs here, learned across prompts

    def with_draft(self, draft: TextDraft | None) -> SpeculativeLM:
        """The same target (and its packed weights) with another draft."""
        return SpeculativeLM(self.checkpoint, draft, self.model)

    def prompt_ids(self, source: PromptSource) -> list[int]:
        return render_prompt(self.checkpoint.tokenizer, source)

    def decode(self, sources: Sequence[PromptSource], options: DecodeOptions,
               on_tokens: TokenCallback | None = None) -> DecodeResult:
        """Generate after each prompt; greedy output is token-identical to the target's own greedy decoding."""
        prompts = [self.prompt_ids(s) for s in sources]
        self.model.begin(len(prompts))
        verifier = ModelVerifier(self.model, len(prompts))
        controller = self.draft_lengths.get(options.draft_length if self.draft is not None else 0,
                                            options.adaptive_draft_length, options.temperature > 0,
                                            options.draft_confidence > 0 and self.draft is not None
                                            and self.draft.stops_itself)
        drafter = None
        if self.draft is not None and controller.wants_draft():
            drafter = self.draft.start(PromptBatch(sources, prompts))
        return speculative_decode(verifier, drafter, prompts, self.checkpoint.stop_token_ids, options,
                                  on_tokens=on_tokens, device=self.model.device, controller=controller)
