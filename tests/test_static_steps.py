"""The fixed-shape decoding step behind CUDA graphs, checked on a CPU against the plain path.

A CUDA graph replays recorded kernels on fixed addresses: the step it records must have shapes that do
not depend on values, must not synchronise with the host, and must read only tensors that stay in
place. These tests check each property where it can be checked without a GPU: the step's logits equal
the plain path's (real base weights, real speech, rows of different lengths, partial batches); the step
traces as a single graph (a host synchronisation would break it); a new window reuses the cache's
memory; and ``StepGraphs`` hands out a buffer that the next step overwrites, as a replay does.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from conftest import ALLISON, LIBRIVOX

from whisper_spec.audio import load_audio
from whisper_spec.core.model_roles import ModelDrafter
from whisper_spec.core.prefix_cache import PrefixCache
from whisper_spec.core.protocols import DraftRequest
from whisper_spec.cuda_graphs import StepGraphs
from whisper_spec.model import WhisperModel
from whisper_spec.whisper.checkpoints import load_whisper
from whisper_spec.whisper.decoder import CachedWhisperDecoder
from whisper_spec.whisper.drafts.rounds import RoundDrafter
from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions
from whisper_spec.whisper.features import encode_audio
from whisper_spec.whisper.logit_rules import SuppressionRules, suppress_at_positions


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(2)
    return load_whisper("base")


CLIPS = [LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav", ALLISON / "vm-review.wav",
         LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0930.wav"]


@pytest.fixture(scope="module")
def hidden(base):
    return encode_audio(base, [load_audio(c) for c in CLIPS])[0]


def test_fixed_shape_steps_give_the_plain_paths_logits(base, hidden):
    decoder = base.model.model.decoder
    plain, static = CachedWhisperDecoder(decoder), CachedWhisperDecoder(decoder, static_steps=True)
    for d in (plain, static):
        d.begin(hidden)
    generator = torch.Generator().manual_seed(0)
    sequences = [[50258, 50259, 50359, 50363] + torch.randint(0, 50257, (60,), generator=generator).tolist()
                 for _ in range(3)]
    caches = PrefixCache(plain, 3), PrefixCache(static, 3)
    compared = 0
    # rows at their own lengths, the whole batch and parts of it, one- and several-token passes
    for length in (4, 5, 6, 9, 10, 17, 18, 30, 31, 32, 45):
        for rows in ([0, 1, 2], [1], [0, 2], [2, 0]):
            index = torch.tensor(rows)
            prefixes = [sequences[r][: length + 2 * r] for r in rows]
            n_last = [min(1 + r, len(p)) for r, p in zip(rows, prefixes)]
            expected, got = (cache.logits(index, prefixes, n_last) for cache in caches)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
            assert torch.equal(got.argmax(-1), expected.argmax(-1))
            compared += got.shape[0] * got.shape[1]
    assert compared > 100
    shapes = static._steps._shapes
    assert len(shapes) >= 4 and all(shape.inputs[0].shape[0] == 3 for shape in shapes.values())  # the whole batch


def test_a_fixed_shape_step_traces_as_one_graph_without_host_synchronisation(base, hidden):
    """``fullgraph=True`` fails on ``.item()``, ``.tolist()`` or a shape that depends on values, which is
    what would break a CUDA graph capture (the plain path has all three and fails this trace)."""
    static = CachedWhisperDecoder(base.model.model.decoder, static_steps=True)
    static.begin(hidden[:2])
    step = torch.compile(static._static_step, backend="eager", fullgraph=True, dynamic=False)
    tokens = torch.tensor([[50258, 50259, 50359], [50258, 50259, 50359]])
    start, index = torch.tensor([0, 0]), torch.tensor([[0, 1, 2], [2, 2, 2]])
    with torch.inference_mode():
        traced = step(tokens, start, index)
        eager = static._static_step(tokens, start, index)
    assert torch.equal(traced, eager)
    # a whole greedy draft round too: k steps, logit rules and argmaxes without a host round trip
    rules = SuppressionRules((3, 3), suppress_tokens=(1, 2), begin_suppress_tokens=(220, 50257))
    inputs = rules.tensors(static.output_weight.shape[0], static.device)
    body = functools.partial(static._greedy_round, k=3, rule=suppress_at_positions)
    with torch.inference_mode():
        compiled = torch.compile(body, backend="eager", fullgraph=True, dynamic=False)
        traced = compiled(tokens, start, index[:, 2], *inputs)
        eager = body(tokens, start, index[:, 2], *inputs)
    assert traced[0].shape == (2, 3) and all(torch.equal(a, b) for a, b in zip(traced, eager))
    plain = CachedWhisperDecoder(base.model.model.decoder)
    plain.begin(hidden[:2])
    rows = torch.tensor([0, 1])
    with torch.inference_mode():
        plain.forward_cached(rows, tokens, start, index)  # it runs eagerly: what fails below is the trace
        with pytest.raises(torch._dynamo.exc.TorchDynamoException, match="[Dd]ata-dependent|tolist|item"):
            torch.compile(plain.forward_cached, backend="eager", fullgraph=True)(rows, tokens, start, index)


def test_a_window_of_the_same_shape_reuses_the_cache_memory(base, hidden):
    """A captured graph reads the cache at the addresses it was recorded with."""
    static = CachedWhisperDecoder(base.model.model.decoder, static_steps=True)
    static.begin(hidden)
    addresses = [t.data_ptr() for t in static._self_k + static._cross_k]
    cache = PrefixCache(static, 3)
    first = cache.logits(torch.tensor([0]), [[50258, 50259, 50359, 50363, 440]], [1])
    static.begin(hidden.flip(0))
    assert [t.data_ptr() for t in static._self_k + static._cross_k] == addresses
    # the same row, now reading the third clip's frames: its own result, not the old window's
    again = PrefixCache(static, 3).logits(torch.tensor([2]), [[50258, 50259, 50359, 50363, 440]], [1])
    assert torch.equal(again, first)
    static.begin(hidden[:2])  # another batch size: new buffers, recorded shapes forgotten
    assert static._self_k[0].shape[0] == 2 and not static._steps._shapes


def test_step_graphs_keep_static_inputs_per_shape_and_overwrite_their_output():
    calls = []

    def step(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return x * 2

    graphs = StepGraphs(capture=False)
    blanks = []

    def blank(n):
        def make():
            blanks.append(n)
            return (torch.zeros(n),)
        return make

    def fill(value):
        return lambda inputs: inputs[0].fill_(value)

    a = graphs.run(3, step, blank(3), fill(1.0))
    assert torch.equal(a, torch.full((3,), 2.0))
    b = graphs.run(3, step, blank(3), fill(5.0))
    assert b.data_ptr() == a.data_ptr() and torch.equal(a, torch.full((3,), 10.0))  # a replay overwrites
    c = graphs.run(2, step, blank(2), fill(1.0))
    assert torch.equal(c, torch.full((2,), 2.0)) and torch.equal(a, torch.full((3,), 10.0))
    assert blanks == [3, 2]  # static inputs allocated once per shape
    graphs.clear()
    graphs.run(3, step, blank(3), fill(1.0))
    assert blanks == [3, 2, 3] and graphs.captured == 0 and not graphs.failures


@pytest.mark.parametrize("min_confidence", [0.0, 0.05])
def test_a_draft_round_in_one_computation_proposes_what_step_by_step_drafting_does(base, hidden, min_confidence):
    """``RoundDrafter`` chooses all k tokens on the device (one CUDA graph a round on a GPU) and cuts each
    row's draft afterwards; the step-by-step ``ModelDrafter`` stops rows as it goes. On real speech, over
    rounds that advance, roll back and leave rows out, both must propose the same tokens."""
    decoder = base.model.model.decoder
    engine = SpeculativeWhisper(base)
    audio = [load_audio(c) for c in CLIPS]
    windows = engine.decode_windows(audio, WindowOptions(language="en"))
    transcripts = [list(w.tokens) + [engine.tokens.eot] for w in windows]
    prompt = [50258, 50259, 50359, 50363]
    rules = engine.tokens.rules([len(prompt)] * 3, timestamps=False)
    drafters = []
    for _ in range(2):
        draft = CachedWhisperDecoder(decoder, layers=[0, 5], static_steps=True)
        draft.begin(hidden)
        drafters.append(ModelDrafter(draft, 3, rules=rules, stop_token_ids=[engine.tokens.eot]))
    stepwise, fused = drafters[0], RoundDrafter(drafters[1], drafters[1].cache.model, rules)
    sequences = [prompt + t[:2] for t in transcripts]
    sizes = []
    for round_, rows in enumerate([[0, 1, 2], [0, 1, 2], [0, 2], [1], [0, 1, 2], [2, 1], [0, 1, 2], [0, 1, 2]]):
        request = DraftRequest(torch.tensor(rows), [list(sequences[r]) for r in rows], k=5,
                               temperature=0.0, generator=None, min_confidence=min_confidence)
        expected, got = stepwise.propose(request), fused.propose(request)
        assert got.tokens == expected.tokens, f"round {round_}"
        sizes += [len(t) for t in got.tokens]
        for r, draft in zip(rows, got.tokens):  # the verifier's verdict, in turn: all, one, none and back
            generated = len(sequences[r]) - len(prompt)
            if round_ % 3 == 0:
                sequences[r] += draft + [transcripts[r][generated % len(transcripts[r])]]
            elif round_ % 3 == 1:
                sequences[r] += draft[:1] + [transcripts[r][(generated + 1) % len(transcripts[r])]]
            else:
                sequences[r] = sequences[r][:-2]
    assert len(sizes) == 20 and min(sizes) >= 1
    if min_confidence == 0:
        assert max(sizes) == 5
    else:  # rows cut at different places by the running confidence
        assert len(set(sizes)) > 1 and min(sizes) < 5
    assert any(key[0] == "round" for key in drafters[1].cache.model._steps._shapes)


def test_cuda_graphs_are_ignored_on_a_cpu_where_the_plain_path_is_faster():
    engine = WhisperModel("base", "layers:0,5", device="cpu", cuda_graphs=True).engine
    assert engine.decoder._steps is None and engine.draft.decoder._steps is None


def test_step_graphs_record_once_then_replay_and_fall_back_when_capture_fails(monkeypatch):
    """The capture path, with torch.cuda's graph API replaced by recorders (no GPU here): a shape is warmed
    up and recorded once, later calls only refill its inputs and replay; a step that cannot be captured
    warns and runs eagerly from then on."""
    events = []
    capturing = []

    class FakeStream:
        def wait_stream(self, other):
            events.append("wait")

    class FakeGraph:
        def replay(self):
            events.append("replay")

    class Capture:
        def __init__(self, graph, pool=None):
            events.append(("capture", pool))

        def __enter__(self):
            capturing.append(True)
            return self

        def __exit__(self, *exc):
            capturing.pop()
            return False

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", Capture)

    def step(x):
        events.append("step")
        return x + 1

    graphs = StepGraphs(capture=True)
    first = graphs.run("k", step, lambda: (torch.zeros(2),), lambda inputs: inputs[0].fill_(3.0))
    assert events.count("step") == 3 and ("capture", "pool") in events  # two warm-ups, one recording
    assert events[-1] == "replay" and graphs.captured == 1
    events.clear()
    again = graphs.run("k", step, lambda: pytest.fail("inputs are allocated once"), lambda inputs: inputs[0].fill_(5.0))
    assert events == ["replay"] and again is first  # the recorded output buffer, refilled by the replay

    def uncapturable(x):
        if capturing:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        return x * 2

    fallback = StepGraphs(capture=True)
    with pytest.warns(UserWarning, match="not permitted"):
        out = fallback.run("k", uncapturable, lambda: (torch.zeros(2),), lambda inputs: inputs[0].fill_(4.0))
    assert torch.equal(out, torch.full((2,), 8.0))  # the same result, launched eagerly
    assert fallback.failures == ["operation not permitted when stream is capturing"] and fallback.captured == 0
    again = fallback.run("k", uncapturable, pytest.fail, lambda inputs: inputs[0].fill_(1.0))
    assert torch.equal(again, torch.full((2,), 2.0))
