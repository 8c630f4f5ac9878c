"""A draft decoder's greedy round as one fixed-shape computation, and the choice between it and step by step."""

from __future__ import annotations

from collections.abc import Sequence

from whisper_spec.core.model_roles import ModelDrafter
from whisper_spec.core.prefix_cache import PrefixCache
from whisper_spec.core.protocols import Drafter, DraftRequest, Proposal
from whisper_spec.whisper.decoder import MAX_STATIC_TOKENS, CachedWhisperDecoder
from whisper_spec.whisper.drafts.protocol import DraftSetup
from whisper_spec.whisper.logit_rules import SuppressionRules, suppress_at_positions


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


def model_drafter(decoder: CachedWhisperDecoder, setup: DraftSetup,
                  stop_token_ids: Sequence[int]) -> tuple[Drafter, PrefixCache]:
    """A drafter for a draft decoder that shares the target's tokenizer and rules (whole rounds at once
    where the decoder runs fixed-shape steps and the rules allow it, else step by step), and its cache
    (whose rows a joining window must ``forget``)."""
    drafter = ModelDrafter(decoder, setup.capacity, rules=setup.rules, stop_token_ids=stop_token_ids)
    if decoder.static_steps and isinstance(setup.rules, SuppressionRules):
        return RoundDrafter(drafter, decoder, setup.rules), drafter.cache
    return drafter, drafter.cache
