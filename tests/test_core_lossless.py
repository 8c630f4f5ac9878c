"""Losslessness of the draft/verify loop on small random models, for every k and batch shape."""

from __future__ import annotations

import pytest
import torch
from conftest import HashModel, OracleDrafter
from transformers import WhisperConfig, WhisperForConditionalGeneration

from whisper_spec.core.loop import DecodeOptions, SpeculativeBatch, speculative_decode
from whisper_spec.core.model_roles import ModelDrafter, ModelVerifier, PrefixHidingDrafter
from whisper_spec.whisper.decoder import CachedWhisperDecoder

VOCAB = 40
STOP = 0


def greedy(model_seed: int, prompts, max_new: int):
    model = HashModel(VOCAB, len(prompts), model_seed)
    verifier = ModelVerifier(model, len(prompts))
    return speculative_decode(verifier, None, prompts, [STOP], DecodeOptions(max_new_tokens=max_new))


PROMPTS = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8], [9, 9]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("right", [True, False])
def test_oracle_drafters_never_change_the_greedy_output(seed, k, right):
    reference = greedy(seed, PROMPTS, 30)
    continuations = {i: list(r.tokens) for i, r in enumerate(reference.rows)}
    model = HashModel(VOCAB, len(PROMPTS), seed)
    drafter = OracleDrafter(continuations, [len(p) for p in PROMPTS], VOCAB, right)
    result = speculative_decode(ModelVerifier(model, len(PROMPTS)), drafter, PROMPTS, [STOP],
                                DecodeOptions(max_new_tokens=30, draft_length=k, adaptive_draft_length=False))
    assert [r.tokens for r in result.rows] == [r.tokens for r in reference.rows]
    for row in result.rows:
        assert len(row.from_draft) == len(row.tokens)
        assert sum(row.from_draft) == row.stats.accepted or (row.stopped and sum(row.from_draft) <= row.stats.accepted)
    if right:
        # every proposal is accepted, so each target call yields up to k+1 tokens
        assert result.stats.accepted == result.stats.drafted
        assert result.stats.target_calls < reference.stats.target_calls or k == 1
    else:
        assert result.stats.accepted == 0
        assert result.stats.target_calls == reference.stats.target_calls


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("adaptive", [False, True])
def test_a_random_model_drafter_never_changes_the_greedy_output(seed, adaptive):
    reference = greedy(seed, PROMPTS, 40)
    target = HashModel(VOCAB, len(PROMPTS), seed)
    # the draft agrees with the target on some prefixes only: a different seed of the same family
    draft = HashModel(VOCAB, len(PROMPTS), seed + 100)
    draft.table[: 600] = target.table[: 600]
    draft.weights = target.weights
    result = speculative_decode(
        ModelVerifier(target, len(PROMPTS)), ModelDrafter(draft, len(PROMPTS), stop_token_ids=[STOP]),
        PROMPTS, [STOP], DecodeOptions(max_new_tokens=40, draft_length=5, adaptive_draft_length=adaptive))
    assert [r.tokens for r in result.rows] == [r.tokens for r in reference.rows]
    assert 0 < result.stats.accepted < result.stats.drafted


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_that_join_a_running_batch_decode_as_they_would_alone(seed):
    """Continuous batching: two slots, five prompts joining as slots free up, each with its own budget."""
    prompts = PROMPTS + [[5, 6]]
    budgets = [30, 7, 25, 12, 18]
    alone = [greedy(seed, [p], b).rows[0].tokens for p, b in zip(prompts, budgets)]
    target = HashModel(VOCAB, 2, seed)
    draft = HashModel(VOCAB, 2, seed + 100)
    draft.table[: 600] = target.table[: 600]
    draft.weights = target.weights
    verifier, drafter = ModelVerifier(target, 2), ModelDrafter(draft, 2, stop_token_ids=[STOP])
    batch = SpeculativeBatch(verifier, drafter, [STOP], DecodeOptions(max_new_tokens=40, draft_length=4))
    waiting, slot_of, decoded, rounds_shared = list(range(len(prompts))), {}, {}, 0
    while waiting or batch.active:
        for slot in (s for s in range(2) if s not in batch.active):
            if waiting:
                i = waiting.pop(0)
                verifier.cache.forget([slot])
                drafter.cache.forget([slot])
                batch.add(slot, prompts[i], budgets[i])
                slot_of[slot] = i
        rounds_shared += len(batch.active) == 2
        for slot, row in batch.round():
            decoded[slot_of[slot]] = row.tokens
    assert [decoded[i] for i in range(len(prompts))] == alone
    assert rounds_shared > 0 and batch.stats.accepted > 0
    with pytest.raises(ValueError, match="still decoding"):
        batch.add(0, [1])
        batch.add(0, [1])


def test_a_draft_shown_part_of_each_prompt_stays_lossless_while_its_rules_see_whole_sequences():
    reference = greedy(0, PROMPTS, 30)
    hidden = [p[: len(p) // 2] for p in PROMPTS]  # e.g. a Whisper prompt's previous text
    seen_by_rules = []

    def rules(rows, sequences, drafts, logits):
        seen_by_rules.extend((int(r), list(s)) for r, s in zip(rows, sequences))
        return logits

    draft = HashModel(VOCAB, len(PROMPTS), 0)  # the target's own function, read from other positions
    drafter = PrefixHidingDrafter(lambda r: ModelDrafter(draft, len(PROMPTS), rules=r, stop_token_ids=[STOP]),
                                  rules, hidden)
    result = speculative_decode(ModelVerifier(HashModel(VOCAB, len(PROMPTS), 0), len(PROMPTS)), drafter,
                                PROMPTS, [STOP], DecodeOptions(max_new_tokens=30, draft_length=4,
                                                               adaptive_draft_length=False))
    assert [r.tokens for r in result.rows] == [r.tokens for r in reference.rows]
    assert result.stats.drafted > 0
    for row, prompt in enumerate(PROMPTS):  # the draft's cache starts with the visible part of the prompt
        visible = prompt[len(hidden[row]):]
        assert draft.cache[row, : len(visible)].tolist() == visible
    assert seen_by_rules and all(s[: len(PROMPTS[r])] == PROMPTS[r] for r, s in seen_by_rules)


def tiny_whisper(seed: int) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=120, d_model=64, encoder_layers=1, decoder_layers=3,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, num_mel_bins=80, max_target_positions=64,
                           decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    return WhisperForConditionalGeneration(config).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_whisper_decoder_with_a_layer_subset_draft_matches_transformers_greedy(seed, k):
    model = tiny_whisper(seed)
    encoder_hidden = torch.randn(3, 1500, 64)
    prompts = [[1, 5], [1, 6, 7], [1]]
    target = CachedWhisperDecoder(model.model.decoder)
    target.begin(encoder_hidden)
    draft = CachedWhisperDecoder(model.model.decoder, layers=[0, 2])
    draft.begin(encoder_hidden)
    result = speculative_decode(ModelVerifier(target, 3), ModelDrafter(draft, 3, stop_token_ids=[2]),
                                prompts, [2],
                                DecodeOptions(max_new_tokens=25, draft_length=k, adaptive_draft_length=False))
    for row, prompt, hidden in zip(result.rows, prompts, encoder_hidden):
        # transformers' own greedy loop over the same weights, one token at a time, no cache
        sequence = list(prompt)
        with torch.no_grad():
            for _ in range(25):
                logits = model(encoder_outputs=(hidden[None],), decoder_input_ids=torch.tensor([sequence])).logits
                sequence.append(int(logits[0, -1].argmax()))
                if sequence[-1] == 2:
                    break
        assert list(row.tokens) == sequence[len(prompt):]


def test_sampling_through_the_loop_preserves_the_target_distribution():
    """Two sampled tokens from a Markov target with a mismatched Markov draft: joint frequencies = p."""
    vocab, rows = 4, 30000
    g = torch.Generator().manual_seed(0)
    p_next = torch.softmax(torch.randn(vocab, vocab, generator=g) * 1.5, dim=-1)  # p(x_t | x_{t-1})
    q_next = torch.softmax(torch.randn(vocab, vocab, generator=g) * 1.5, dim=-1)

    class Markov:
        def __init__(self, table):
            self.table = table

        @property
        def device(self):
            return torch.device("cpu")

        def forward_cached(self, rows, tokens, start, output_index):
            last = tokens.gather(1, output_index)
            return self.table[last].log()

    prompts = [[0]] * rows
    result = speculative_decode(
        ModelVerifier(Markov(p_next), rows), ModelDrafter(Markov(q_next), rows), prompts, [],
        DecodeOptions(max_new_tokens=2, draft_length=2, adaptive_draft_length=False, temperature=1.0, seed=3))
    pairs = torch.tensor([r.tokens for r in result.rows])
    observed = torch.bincount(pairs[:, 0] * vocab + pairs[:, 1], minlength=vocab * vocab).float() / rows
    expected = (p_next[0][:, None] * p_next).flatten()
    assert torch.allclose(observed, expected, atol=0.012)
    assert 0 < result.stats.accepted < result.stats.drafted
