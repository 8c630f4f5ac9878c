"""Near-ties in half precision: an exact rescoring keeps speculative output equal to the same engine's greedy.

``RoundingModel`` imitates half precision: its multi-token passes add a small deterministic error to the
logits that its one-token steps do not (different kernels round differently), and its logit table is
full of near-ties. Without the near-tie rule speculative decoding then drifts from greedy decoding; with
it they agree.
"""

import pytest
import torch
from conftest import HashModel, OracleDrafter

from whisper_spec.core.loop import DecodeOptions, speculative_decode
from whisper_spec.core.model_roles import ModelVerifier, NearTieRule, no_rules

VOCAB, ERROR = 40, 0.05


class RoundingModel(HashModel):
    def __init__(self, seed: int):
        super().__init__(VOCAB, 1, seed)
        g = torch.Generator().manual_seed(seed + 100)
        best = self.table.argmax(dim=-1)
        runner_up = (best + 1) % VOCAB
        # half the rows: a runner-up within 2 x ERROR of the best, which a rounding error can flip
        gap = torch.rand(self.table.shape[0], generator=g) * 2 * ERROR
        tie = torch.rand(self.table.shape[0], generator=g) < 0.5
        top = self.table.max(dim=-1).values
        rows = torch.arange(self.table.shape[0])
        self.table[rows[tie], runner_up[tie]] = top[tie] - gap[tie]

    def forward_cached(self, rows, tokens, start, output_index):
        logits = super().forward_cached(rows, tokens, start, output_index)
        if tokens.shape[1] > 1:  # another kernel: its own rounding, a fixed pseudo-random error
            g = torch.Generator().manual_seed(int(start.sum()) * 7919 + tokens.shape[1])
            logits = logits + ERROR * (2 * torch.rand(logits.shape, generator=g) - 1)
        return logits

    def exact(self, row: int, prefix) -> torch.Tensor:
        """What the model computes without rounding, from the prefix alone."""
        ids = torch.tensor(prefix)
        return self.table[int((ids * self.weights[: len(ids)]).sum()) % 1009]


def decode(seed, drafted: bool, near_ties: bool, continuation=None):
    model = RoundingModel(seed)
    prompt = [3, 4, 5]
    rule = NearTieRule(4 * ERROR, model.exact) if near_ties else None
    verifier = ModelVerifier(model, 1, no_rules, near_ties=rule)
    drafter = OracleDrafter({0: continuation}, [len(prompt)], VOCAB, right=True) if drafted else None
    options = DecodeOptions(max_new_tokens=60, draft_length=5, adaptive_draft_length=False)
    result = speculative_decode(verifier, drafter, [prompt], [0], options)
    return list(result.rows[0].tokens), rule


def test_without_the_rule_rounding_flips_near_ties():
    flipped = 0
    for seed in range(6):
        greedy, _ = decode(seed, drafted=False, near_ties=False)
        speculative, _ = decode(seed, drafted=True, near_ties=False, continuation=greedy)
        flipped += speculative != greedy
    assert flipped >= 3  # the harness does create the problem the rule solves


def test_with_the_rule_speculative_equals_greedy():
    for seed in range(6):
        greedy, rule = decode(seed, drafted=False, near_ties=True)
        speculative, spec_rule = decode(seed, drafted=True, near_ties=True, continuation=greedy)
        assert speculative == greedy, seed
        assert sum(rule.rescored.values()) > 0 and sum(spec_rule.rescored.values()) > 0


def test_margin_must_be_positive():
    with pytest.raises(ValueError, match="margin"):
        NearTieRule(0.0, lambda row, prefix: torch.zeros(VOCAB))


def test_bfloat16_speculative_equals_bfloat16_greedy_on_real_speech():
    """base in bfloat16 on real clips, a batch of different lengths: with the rule (the default in half
    precision) speculative == the same engine's greedy, and the rule did meet near-ties."""
    from conftest import ALLISON, LIBRIVOX

    from whisper_spec.audio import load_audio
    from whisper_spec.draft_specs import resolve_draft
    from whisper_spec.whisper.checkpoints import load_whisper
    from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions

    torch.set_num_threads(2)
    clips = [LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav",
             LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0930.wav", ALLISON / "vm-review.wav"]
    audio = [load_audio(c) for c in clips]
    base = load_whisper("base", dtype=torch.bfloat16)
    engine = SpeculativeWhisper(base)
    options = WindowOptions(language="en", draft_length=6, adaptive_draft_length=False)
    greedy = engine.decode_windows(audio, options)
    drafted = engine.with_draft(resolve_draft("layers:0,5", base)).decode_windows(audio, options)
    assert [w.tokens for w in drafted] == [w.tokens for w in greedy]
    assert sum(w.stats.drafted for w in drafted) > 0
    assert sum(w.stats.rescored for w in greedy) + sum(w.stats.rescored for w in drafted) > 0
    assert "dashwood" in greedy[0].text.lower()  # bfloat16 still transcribes
