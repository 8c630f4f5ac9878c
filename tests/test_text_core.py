"""The causal-LM adapter and the text drafters on small random-weight models (no downloads, seconds)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from whisper_spec.core.loop import DecodeOptions, speculative_decode
from whisper_spec.core.model_roles import ModelDrafter, ModelVerifier
from whisper_spec.core.protocols import DraftRequest
from whisper_spec.core.text_bridge import TextBridgeDrafter, Tokenization
from whisper_spec.text.drafts import LookupThenModelDrafter, PromptLookupDrafter
from whisper_spec.text.model import CachedCausalLM

torch.set_num_threads(2)
VOCAB = 97


def _random_lm(kind: str, seed: int, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    shape = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 tie_word_embeddings=kind == "qwen2")
    model = Qwen2ForCausalLM(Qwen2Config(**shape)) if kind == "qwen2" else LlamaForCausalLM(LlamaConfig(**shape))
    with torch.no_grad():  # larger weights than the default init: peaked, varied next-token choices
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return {"llama": _random_lm("llama", 0), "qwen2": _random_lm("qwen2", 1), "draft": _random_lm("qwen2", 2, 1)}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("pack", [True, False])
def test_cached_forward_matches_transformers(models, kind, pack):
    model = models[kind]
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(ids).logits  # [2, 24, V]
    cached = CachedCausalLM(model, pack_weights=pack)
    cached.begin(2, capacity=8)  # too small on purpose: the cache must grow
    # ragged rows: row 0 gets 10 tokens, row 1 gets 13 (padding after its real tokens)
    out = cached.forward_cached(torch.tensor([0, 1]), ids[:, :13], torch.tensor([0, 0]),
                                torch.tensor([[9, 9], [11, 12]]))
    torch.testing.assert_close(out[0, 0], reference[0, 9], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], reference[1, 11:13], rtol=1e-4, atol=1e-4)
    # row 0 continues from position 10 (overwriting the padding), alone; then one token at a time
    out = cached.forward_cached(torch.tensor([0]), ids[:1, 10:20], torch.tensor([10]), torch.arange(10)[None])
    torch.testing.assert_close(out[0], reference[0, 10:20], rtol=1e-4, atol=1e-4)
    out = cached.forward_cached(torch.tensor([1]), ids[1:, 13:14], torch.tensor([13]), torch.tensor([[0]]))
    torch.testing.assert_close(out[0, 0], reference[1, 13], rtol=1e-4, atol=1e-4)


def test_restricted_output_vocabulary(models):
    model = models["llama"]
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(4))
    keep = list(range(0, VOCAB, 3))
    cached = CachedCausalLM(model, pack_weights=False, output_ids=keep)
    cached.begin(1)
    out = cached.forward_cached(torch.tensor([0]), ids, torch.tensor([0]), torch.tensor([[7]]))[0, 0]
    with torch.no_grad():
        reference = model(ids).logits[0, 7]
    torch.testing.assert_close(out[keep], reference[keep], rtol=1e-4, atol=1e-4)
    dropped = [i for i in range(VOCAB) if i % 3]
    assert torch.isneginf(out[dropped]).all()


def test_int8_draft_forward_stays_close_to_float32(models):
    """A draft's int8 weights change its proposals a little, never the output: here, how little."""
    model = models["qwen2"]
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(5))
    exact, quantized = CachedCausalLM(model, pack_weights=False), CachedCausalLM(model, pack_weights=False, int8=True)
    assert quantized.head.quantized is not None and exact.head.quantized is None
    out = []
    for cached in (exact, quantized):
        cached.begin(1)
        out.append(cached.forward_cached(torch.tensor([0]), ids, torch.tensor([0]), torch.arange(16)[None])[0])
    assert not torch.equal(out[0], out[1])  # it did run on other weights
    # these random weights are far rougher than a trained model's (whose choices rarely change at all)
    error = (out[0] - out[1]).abs()
    assert error.mean() < 0.1 * out[0].abs().mean()
    assert (out[0].argmax(-1) == out[1].argmax(-1)).float().mean() >= 0.75


def _transformers_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _decode(target, drafter_factory, prompts, n, **options):
    cached = CachedCausalLM(target)
    cached.begin(len(prompts))
    verifier = ModelVerifier(cached, len(prompts))
    return speculative_decode(verifier, drafter_factory(len(prompts)), prompts, [], DecodeOptions(
        max_new_tokens=n, **options))


PROMPTS = [[5, 17, 33, 2, 5, 17, 33, 2, 5, 17, 40], [60, 61, 62, 63, 64, 65, 60, 61, 62], [9, 8, 7]]


def _drafter(models, kind):
    if kind == "none":
        return lambda b: None
    if kind == "prompt-lookup":
        return lambda b: PromptLookupDrafter()
    source = models["llama"] if kind == "same-model" else models["draft"]

    def make(batch_size):
        draft = CachedCausalLM(source, pack_weights=False, int8=kind == "int8-model")
        draft.begin(batch_size)
        drafter = ModelDrafter(draft, batch_size)
        return LookupThenModelDrafter(PromptLookupDrafter(), drafter) if kind == "lookup+model" else drafter
    return make


@pytest.fixture(scope="module")
def expected(models):
    return [_transformers_greedy(models["llama"], p, 24) for p in PROMPTS]


@pytest.mark.parametrize("kind", ["none", "prompt-lookup", "same-model", "weak-model", "int8-model", "lookup+model"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_greedy_speculative_equals_transformers_greedy(models, expected, kind, adaptive):
    result = _decode(models["llama"], _drafter(models, kind), PROMPTS, 24, adaptive_draft_length=adaptive,
                     draft_length=5)
    assert [list(r.tokens) for r in result.rows] == expected
    if kind == "same-model" and not adaptive:
        # the target drafting for itself is always right: every round accepts its whole draft
        assert result.stats.accepted == result.stats.drafted > 0


def test_prompt_lookup_proposes_the_latest_continuation():
    drafter = PromptLookupDrafter(max_ngram=3, min_ngram=1)
    # the suffix (1, 2) occurred twice; the latest occurrence (followed by 7, 8) wins
    assert PromptLookupDrafter(max_ngram=2, min_ngram=2).lookup([1, 2, 3, 4, 1, 2, 7, 8, 9, 1, 2], 2) == [7, 8]
    assert drafter.lookup([1, 2, 3, 4, 1, 2, 7, 8, 9, 1, 2], 2) == [7, 8]
    # a longer match beats a more recent shorter one: (5, 1, 2) -> 6
    assert drafter.lookup([5, 1, 2, 6, 1, 2, 4, 5, 1, 2], 3) == [6, 1, 2]
    assert drafter.lookup([1, 2, 3], 4) == []  # nothing repeats
    assert PromptLookupDrafter(max_ngram=2, min_ngram=2).lookup([1, 2, 1, 3, 1], 2) == []
    proposal = drafter.propose(DraftRequest(torch.tensor([0]), [[4, 4, 4]], 3, 0.0, None))
    assert proposal.tokens == [[4]] and proposal.forward_calls == 0 and proposal.q_draft is None


def test_sampling_with_prompt_lookup_keeps_the_target_distribution(models):
    """Deterministic proposals are one-hot q_draft: the first token is still distributed as p_target."""
    target = models["draft"]
    prompt = [3, 4, 5, 3, 4, 5, 3, 4]
    with torch.no_grad():
        p = torch.softmax(target(torch.tensor([prompt])).logits[0, -1] / 1.5, dim=-1)
    runs = 300  # rows of one batch: each row draws its own tokens
    result = _decode(target, lambda b: PromptLookupDrafter(), [prompt] * runs, 2, temperature=1.5, seed=0,
                     adaptive_draft_length=False, draft_length=3)
    counts = torch.bincount(torch.tensor([r.tokens[0] for r in result.rows]), minlength=VOCAB).float()
    assert result.stats.drafted > 0  # the prompt repeats, so lookup did propose
    top = p.topk(3).indices
    # binomial standard error at 300 draws is below 0.03 for any probability
    torch.testing.assert_close(counts[top] / runs, p[top], atol=0.09, rtol=0)


def test_text_bridge_maps_draft_text_to_target_ids():
    """A character-level target and a two-character draft vocabulary meet through text."""
    chars = "abcdefgh "
    target = Tokenization(encode=lambda s: [chars.index(c) for c in s],
                          decode=lambda ids: "".join(chars[i] for i in ids),
                          stop_ids=frozenset({99}), special_ids=frozenset({99}))
    pairs = ["ab", "cd", "ef", "gh", " a"]
    draft = Tokenization(encode=lambda s: [pairs.index(s[i:i + 2]) for i in range(0, len(s) - 1, 2)],
                         decode=lambda ids: "".join(pairs[i] for i in ids),
                         stop_ids=frozenset({50}), special_ids=frozenset({50}))

    class Scripted:
        def propose(self, request):
            assert request.sequences == [[7, 0]]  # draft prompt [7] + "ab" in draft ids
            from whisper_spec.core.protocols import Proposal
            return Proposal(tokens=[[1, 2, 50]], forward_calls=3)

    bridge = TextBridgeDrafter(Scripted(), draft, target, 99, draft_prompts=[[7]], target_prompt_lengths=[1])
    proposal = bridge.propose(DraftRequest(torch.tensor([0]), [[8, 0, 1]], 6, 0.0, None))
    assert proposal.tokens == [[2, 3, 4, 5, 99]]  # "cdef" then the target's stop id
    assert proposal.forward_calls == 3


def test_text_bridge_carries_shared_ids_one_to_one_and_text_between_them():
    """Whisper's timestamps exist in both vocabularies: they cross by id, the text around them as text."""
    chars = "abcdefgh "
    target = Tokenization(encode=lambda s: [chars.index(c) for c in s],
                          decode=lambda ids: "".join(chars[i] for i in ids),
                          stop_ids=frozenset({99}), special_ids=frozenset({99, 200, 201, 202}))
    pairs = ["ab", "cd", "ef", "gh", " a"]
    draft = Tokenization(encode=lambda s: [pairs.index(s[i:i + 2]) for i in range(0, len(s) - 1, 2)],
                         decode=lambda ids: "".join(pairs[i] for i in ids),
                         stop_ids=frozenset({50}), special_ids=frozenset({50, 300, 301, 302}))
    seen = []

    class Scripted:
        def propose(self, request):
            seen.append(request.sequences)
            from whisper_spec.core.protocols import Proposal
            return Proposal(tokens=[[2, 301, 301, 3, 50]], forward_calls=5)

    bridge = TextBridgeDrafter(Scripted(), draft, target, 99, draft_prompts=[[7]], target_prompt_lengths=[1],
                               shared_ids={200: 300, 201: 301, 202: 302})
    # committed: <t0> "abcd"; the draft continues "ef" <t1><t1> "gh" <eot>
    proposal = bridge.propose(DraftRequest(torch.tensor([0]), [[8, 200, 0, 1, 2, 3]], 9, 0.0, None))
    assert seen == [[[7, 300, 0, 1]]]
    assert proposal.tokens == [[4, 5, 201, 201, 6, 7, 99]]


def test_a_model_draft_stops_after_a_token_it_is_unsure_of(models):
    """With min_confidence, each row's draft ends with the first token that takes the draft's probability
    of its whole proposal (the product of its token probabilities) below the threshold."""
    source = models["draft"]
    prompts = [[5, 17, 33, 2], [60, 61, 62], [9, 8, 7, 6, 5]]
    k = 8
    # the draft's own greedy continuation and the probability it gave each token, step by step
    expected_q = []
    for prompt in prompts:
        ids, qs = list(prompt), []
        with torch.no_grad():
            for _ in range(k):
                p = torch.softmax(source(torch.tensor([ids])).logits[0, -1], dim=-1)
                ids.append(int(p.argmax()))
                qs.append(float(p.max()))
        expected_q.append((ids[len(prompt):], qs))
    products = [torch.tensor(qs).cumprod(0).tolist() for _, qs in expected_q]
    # The threshold lies between two measured products, never on one: the draft's cached forward and this
    # reference round the products differently from machine to machine, and a threshold equal to one of
    # them made the comparison a coin toss. Of the gaps around the middle, take the widest (in ratio).
    ranked = sorted(p for row in products for p in row)
    gaps = range(k // 2, len(ranked) - k // 2)  # stops some rows early, not all
    widest = max(gaps, key=lambda i: ranked[i + 1] / ranked[i])
    assert ranked[widest + 1] / ranked[widest] > 1.01, "no product gap wide enough to hold a threshold"
    threshold = (ranked[widest] * ranked[widest + 1]) ** 0.5
    draft = CachedCausalLM(source, pack_weights=False)
    draft.begin(len(prompts))
    proposal = ModelDrafter(draft, len(prompts)).propose(
        DraftRequest(torch.arange(len(prompts)), prompts, k, 0.0, None, min_confidence=threshold))
    stopped_early = 0
    for tokens, (greedy, _), row in zip(proposal.tokens, expected_q, products):
        unsure = [i for i, p in enumerate(row) if p < threshold]
        length = unsure[0] + 1 if unsure else k
        assert tokens == greedy[:length]
        stopped_early += length < k
    assert stopped_early > 0
    assert proposal.forward_calls == max(len(t) for t in proposal.tokens)


@pytest.mark.parametrize("kind", ["same-model", "weak-model"])
def test_greedy_parity_when_drafts_stop_on_low_confidence(models, expected, kind):
    result = _decode(models["llama"], _drafter(models, kind), PROMPTS, 24, adaptive_draft_length=False,
                     draft_length=8, draft_confidence=0.6)
    assert [list(r.tokens) for r in result.rows] == expected
    assert 0 < result.stats.drafted < 8 * result.stats.rounds  # some drafts ended before k
