"""Running a distilled draft (made by ``whisper-spec distill``; see ``whisper_spec.distill``).

``DistilledDraft`` is the Whisper draft the engine runs: a shared-encoder draft whose restricted output
rows are scattered back into target ids; a feature-level draft runs through ``FeatureDrafter``, which
feeds it the target's hidden states. The draft module itself (``distill.model.DraftLayers``) comes from
``distill.checkpoint.load_draft``; here it is only run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from whisper_spec.core.model_roles import (
    LogitRules,
    ModelDrafter,
    PrefixHidingDrafter,
    draft_step,
    extend_drafts,
    no_rules,
    stack_q,
)
from whisper_spec.core.prefix_cache import IncrementalModel
from whisper_spec.core.protocols import DraftRequest, Proposal
from whisper_spec.whisper.checkpoints import WhisperCheckpoint
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts.protocol import Admitting, DraftSetup, WindowBatch

# Distilled drafts run on int8 weights on a CPU (float32 only; ignored elsewhere): they have no encoder of
# their own, so a cheaper step is all int8 changes, and only the proposals can change.
INT8 = True
# They end their rounds once the probability they give their proposal falls below this, and the draft
# length policy then only switches them on or off: their agreements come in runs, which the per-token
# geometric model underrates. The threshold and the cap were chosen by sweeps on held-out speech
# (evaluation/results/measurements-behind-the-defaults.md).
DRAFT_CONFIDENCE = 0.5
DRAFT_LENGTH = 12  # the most tokens a round drafts


class _FullVocabulary:
    """An ``IncrementalModel`` that scatters a restricted-output model's scores into full-vocabulary rows."""

    def __init__(self, inner: CachedWhisperDecoder, vocab_ids: Tensor, vocab_size: int):
        self.inner = inner
        self.vocab_ids = vocab_ids
        self.vocab_size = vocab_size

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward_cached(self, rows: Tensor, tokens: Tensor, start: Tensor, output_index: Tensor) -> Tensor:
        """See ``IncrementalModel``: logits [b, N, V] with -inf for ids the draft cannot emit."""
        restricted = self.inner.forward_cached(rows, tokens, start, output_index)  # [b, N, R]
        full = restricted.new_full((*restricted.shape[:2], self.vocab_size), -torch.inf)
        return full.index_copy_(2, self.vocab_ids, restricted)


class FeatureDrafter:
    """Drafts with a feature-level draft: the target's hidden states where known, zeros beyond.

    Per row it remembers how many positions its cache holds computed from the TARGET's states
    (``synced``). Each round it first reads the positions committed since (the verify pass has computed
    their target states, all but the newest), which also yields its first draft token; each further
    step reads a draft token whose previous state is unknown (zeros, as trained). Those positions are
    overwritten once the target's states for them exist, so the draft never builds on guesses for
    committed text.
    """

    def __init__(self, model: nn.Module, decoder: CachedWhisperDecoder, target_states: Tensor,
                 vocab_size: int, rules: LogitRules = no_rules, stop_token_ids: Sequence[int] = ()):
        """
        Args:
            model: the feature-level draft (a ``distill.model.DistilledDecoder`` with ``features``).
            decoder: a ``CachedWhisperDecoder`` over ``model``, begun on the target's encoder outputs.
            target_states: [B, P, D] the target's final hidden state at each position of each batch row,
                valid at least for every committed position but the last when ``propose`` is called.
            vocab_size: the target's vocabulary size (proposals are full-vocabulary ids).
        """
        self.model = model
        self.decoder = decoder
        self.target_states = target_states
        self.vocab_size = vocab_size
        self.rules = rules
        self.stop_token_ids = frozenset(stop_token_ids)
        self.synced = [0] * target_states.shape[0]

    def restart(self, rows: Sequence[int]) -> None:
        """Rows ``rows`` start new windows: nothing of them is cached yet."""
        for row in rows:
            self.synced[row] = 0

    def _scores(self, rows: Tensor, restricted: Tensor, prefixes: Sequence[Sequence[int]]) -> Tensor:
        """Restricted logits [b, R] -> full-vocabulary logits [b, V] under the target's rules."""
        full = restricted.new_full((restricted.shape[0], self.vocab_size), -torch.inf)
        full.index_copy_(1, self.model.vocab_ids, restricted)
        return self.rules(rows, prefixes, [[] for _ in prefixes], full[:, None])[:, 0].float()

    @torch.inference_mode()
    def _read(self, rows: list[int], tokens: list[list[int]], starts: list[int],
              states: list[Tensor] | None) -> Tensor:
        """Feed each row's ``tokens`` from position ``starts`` with ``states`` [n, D] as h_{t-1} (None:
        unknown, zeros); returns the logits [b, R] after each row's last token."""
        width = max(len(t) for t in tokens)
        device = self.decoder.device
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        previous = torch.zeros(len(rows), width, self.model.output_weight.shape[1], device=device,
                               dtype=self.decoder.dtype)
        for i, t in enumerate(tokens):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            if states is not None:
                previous[i, : len(t)] = states[i]
        start = torch.tensor(starts, device=device)
        positions = (start[:, None] + torch.arange(width, device=device)).clamp_max(self.decoder.max_positions - 1)
        embeds = self.model.input_embeds(ids, positions, previous)
        last = torch.tensor([[len(t) - 1] for t in tokens], device=device)
        return self.decoder.forward_cached(torch.tensor(rows), ids, start, last, inputs_embeds=embeds)[:, 0]

    def propose(self, request: DraftRequest) -> Proposal:
        rows = request.rows.tolist()
        sequences = [list(s) for s in request.sequences]
        dim = self.model.output_weight.shape[1]
        # catch up: positions synced .. L-1 with the target's states h_{t-1} (zeros before position 0)
        starts = [min(self.synced[r], len(s) - 1) for r, s in zip(rows, sequences)]
        states = []
        for r, s, start in zip(rows, sequences, starts):
            h = self.target_states[r, max(start - 1, 0): len(s) - 1].to(self.decoder.dtype)
            if start == 0:
                h = torch.cat([h.new_zeros(1, dim), h])
            states.append(h)
        logits = self._read(rows, [s[start:] for s, start in zip(sequences, starts)], starts, states)
        for r, s in zip(rows, sequences):
            self.synced[r] = len(s)
        drafts: list[list[int]] = [[] for _ in rows]
        alive = list(range(len(rows)))
        q_steps: list[tuple[list[int], Tensor]] = []
        calls = 1
        confidence = None  # [len(alive)]
        for step in range(request.k):
            alive_rows = request.rows[alive]
            tokens, probs, confidence, going_on = draft_step(
                self._scores(alive_rows, logits, [sequences[i] + drafts[i] for i in alive]), request, confidence)
            if probs is not None:
                q_steps.append((list(alive), probs))
            alive, confidence = extend_drafts(drafts, alive, tokens, going_on, self.stop_token_ids, confidence)
            if step == request.k - 1 or not alive:
                break
            positions = [len(sequences[i]) + len(drafts[i]) - 1 for i in alive]
            logits = self._read([rows[i] for i in alive], [[drafts[i][-1]] for i in alive], positions, None)
            calls += 1
        return Proposal(tokens=drafts, forward_calls=calls, q_draft=stack_q(q_steps, drafts) if q_steps else None)


class DistilledDraft:
    """A distilled draft as a ``WhisperDraft``: reads the target's encoder outputs, runs its own layers."""

    draft_confidence = DRAFT_CONFIDENCE
    draft_length = DRAFT_LENGTH

    def __init__(self, model: nn.Module, target: WhisperCheckpoint, int8: bool | None = None):
        """
        Args:
            model: a loaded ``distill.model.DraftLayers`` (``distill.checkpoint.load_draft``).
            target: the target it was distilled for.
            int8: run the draft's linear maps on int8 weights (default ``INT8``; CPU float32 only).
        """
        self.model = model
        self.decoder = CachedWhisperDecoder(model, output_weight=model.output_weight,
                                            int8=INT8 if int8 is None else int8)
        self.vocab_size = target.model.model.decoder.embed_tokens.weight.shape[0]
        self.full: IncrementalModel = _FullVocabulary(self.decoder, model.vocab_ids, self.vocab_size)
        self.eot_token_id = target.tokens.eot
        self.sot_token_id = target.tokens.sot
        self.reads_target_states = bool(model.features)  # the engine records them for it

    def start(self, setup: DraftSetup) -> Admitting:
        self.decoder.reserve(setup.capacity, setup.frames)
        if self.model.features:
            if setup.target_states is None:
                raise ValueError("a feature-level draft needs the target's hidden states: decode with an engine "
                                 "that records them (SpeculativeWhisper does when its draft asks)")
            drafter = FeatureDrafter(self.model, self.decoder, setup.target_states, self.vocab_size, setup.rules,
                                     [self.eot_token_id])

            def admit_features(batch: WindowBatch) -> float:
                self.decoder.begin_rows(batch.rows, batch.target_encoder_hidden)
                drafter.restart(batch.rows)
                return 0.0

            return Admitting(drafter, admit_features)
        hiding = PrefixHidingDrafter(lambda rules: ModelDrafter(self.full, setup.capacity, rules=rules,
                                                                stop_token_ids=[self.eot_token_id],
                                                                vocabulary=self.model.vocab_ids),
                                     setup.rules, [[] for _ in range(setup.capacity)])

        def admit(batch: WindowBatch) -> float:
            # Per window, the adapter and the cross-attention keys/values are 1500-frame matrix products;
            # where the draft keeps those keys in bfloat16 anyway (native bfloat16 only), they run in it.
            low = (torch.autocast("cpu", dtype=torch.bfloat16) if self.decoder.cross_dtype == torch.bfloat16
                   else contextlib.nullcontext())
            with torch.inference_mode(), low:
                self.decoder.begin_rows(batch.rows, self.model.encoder_input(batch.target_encoder_hidden))
            hiding.inner.cache.forget(batch.rows)
            for row, prompt in zip(batch.rows, batch.prompts):
                # The draft never saw previous-text prompts in training (long-form windows have them): it
                # drafts from the start of transcript on, as it was trained.
                hiding.restart(row, prompt[: prompt.index(self.sot_token_id)] if self.sot_token_id in prompt else [])
            return 0.0

        return Admitting(hiding, admit)
