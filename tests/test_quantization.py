"""The int8 compute type's linear maps: each row's output independent of the other rows, exact integer
sums, accuracy near float32, and an int8 target whose encoder output does not depend on its batch."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import LIBRIVOX

from whisper_spec import quantization
from whisper_spec.audio import load_audio
from whisper_spec.compute_types import resolve_compute_type
from whisper_spec.quantization import Int8Linear, int8_linear, quantize_linears, quantize_weight
from whisper_spec.whisper.checkpoints import load_whisper

pytestmark = pytest.mark.skipif(not quantization.can_run("cpu"), reason="needs torch built with oneDNN")


@pytest.fixture(scope="module")
def base():
    return load_whisper("base")


@pytest.fixture(scope="module")
def activations(base):
    """Real inputs of base's decoder maps: [T, 512] decoder-layer inputs over real speech, and the
    [T, 2048] inputs of the last layer's fc2."""
    clip = load_audio(sorted(LIBRIVOX.glob("*.wav"))[0])
    model = base.model.model
    with torch.inference_mode():
        hidden = model.encoder(base.feature_extractor([clip]))
        text = " And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power"
        tokens = torch.tensor([base.tokens.prompt(language="en", timestamps=False) + base.tokenizer.encode(text)])
        x = model.decoder.embed_tokens(tokens) + model.decoder.embed_positions.weight[: tokens.shape[1]]
        for layer in model.decoder.layers[:-1]:
            x = layer(x, hidden)
        last = model.decoder.layers[-1]
        wide = last.activation_fn(last.fc1(last.final_layer_norm(x)))
    return x[0], wide[0], last


@pytest.mark.parametrize("bits", [8, 7])
def test_each_rows_output_is_the_same_bits_in_any_company(activations, bits):
    """Checked on real activations, at full-range weights and at the 7-bit fallback."""
    narrow, wide, layer = activations
    for x, linear in ((narrow, layer.self_attn.q_proj), (wide, layer.fc2)):
        weight = quantize_weight(linear.weight, linear.bias, bits=bits)
        together = int8_linear(x, weight)
        assert x.shape[0] >= 17
        for start, rows in ((0, 1), (3, 1), (0, 2), (5, 5), (0, 17)):
            assert torch.equal(int8_linear(x[start: start + rows], weight), together[start: start + rows])
        other = torch.cat([x[:4] * 30, x[4:9]])  # a neighbour with a far larger range changes nothing
        assert torch.equal(int8_linear(other, weight)[4:], together[4:9])


def test_a_fused_map_gives_each_of_its_maps_bits(activations):
    """Query, key and value fused into one Int8Linear (one quantization of the rows, as the int8
    encoder runs them): each part is the same bits as its own map, at one row and at many."""
    narrow, _, layer = activations
    attention = copy.deepcopy(layer.self_attn)
    alone = [Int8Linear(m) for m in (attention.q_proj, attention.k_proj, attention.v_proj)]
    quantization.fuse_self_attention(attention)
    assert not hasattr(attention, "k_proj") and attention.qkv_proj.out_features == 3 * narrow.shape[1]
    with torch.inference_mode():
        for x in (narrow, narrow[:1]):
            for part, own in zip(attention.qkv_proj(x).chunk(3, dim=-1), alone):
                assert torch.equal(part, own(x))


def test_rows_quantize_to_the_levels_of_round_shift_convert(activations):
    """quantize_rows' float-bits shortcut gives round(x * 127 / amax) + 128 with ties to even, on real
    activations, exact halves, the extremes, zero rows and rows of a single value."""
    narrow, wide, _ = activations
    ties = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, -127.0, 0.0, -0.0, 63.5]])
    for x in (narrow, wide, narrow * 1e-20, ties, torch.zeros(3, 8), torch.full((2, 5), -4.0)):
        amax = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        expected = (x * (127.0 / amax)).round().add(128).to(torch.uint8)
        levels, got_amax = quantization.quantize_rows(x)
        assert torch.equal(levels, expected) and torch.equal(got_amax, amax)
    assert quantization.quantize_rows(ties)[0].tolist()[0] == [255, 128, 130, 130, 128, 126, 126, 254, 2, 1,
                                                             128, 128, 192]


def test_the_cpu_int8_product_is_exact_where_it_claims_to_be(activations):
    narrow, _, layer = activations
    weight = quantize_weight(layer.fc1.weight, None)
    x_u8 = torch.randint(0, 256, (7, narrow.shape[1]), dtype=torch.uint8)
    limit = 2 ** (quantization.weight_bits() - 1) - 1
    q = torch.round(layer.fc1.weight / (layer.fc1.weight.abs().amax(1, keepdim=True) / limit)).to(torch.int64)
    exact = (x_u8.to(torch.int64) - 128) @ q.T  # int64: no rounding anywhere
    got = quantization._product(x_u8, weight.packed, torch.ones_like(weight.scale), weight.zero_points)
    assert torch.equal(got, exact.float())


def test_int8_maps_stay_near_float32(activations):
    narrow, wide, layer = activations
    for x, linear in ((narrow, layer.fc1), (wide, layer.fc2), (narrow, layer.encoder_attn.q_proj)):
        reference = linear(x)
        error = (int8_linear(x, quantize_weight(linear.weight, linear.bias)) - reference).norm() / reference.norm()
        assert 0 < error < 0.06  # a broken kernel or scale is off by far more


def test_quantize_linears_replaces_every_map():
    layer = copy.deepcopy(load_whisper("tiny.en").model.model.encoder.layers[0])
    x = torch.randn(3, 2, layer.fc1.in_features)
    reference = layer.fc1(x)
    quantize_linears(layer)
    assert not [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    out = layer.fc1(x)
    assert isinstance(layer.fc1, Int8Linear) and out.shape == reference.shape
    assert (out - reference).norm() / reference.norm() < 0.06


def test_int8_target_encodes_on_int8_maps_each_window_alone(base):
    """The int8 target is a model of its own (the float32 one is untouched); its encoder runs on int8
    maps, its decoder's steps in float32, and a window's encoding does not depend on its batch."""
    int8 = load_whisper("base", int8=True)
    assert int8 is not base and load_whisper("base", int8=True) is int8
    encoder = int8.model.model.encoder
    assert all(not isinstance(m, torch.nn.Linear) for m in encoder.modules())
    # per layer: the fused query/key/value map, the output map, fc1, fc2
    assert sum(isinstance(m, Int8Linear) for m in encoder.modules()) == 4 * len(encoder.layers)
    decoder = int8.model.model.decoder  # only its projections of the encoder outputs: once per window too
    first = decoder.layers[0]
    assert [isinstance(m, Int8Linear) for m in (first.encoder_attn.k_proj, first.encoder_attn.q_proj, first.fc1)] == [
        True, False, False]
    assert sum(isinstance(m, Int8Linear) for m in decoder.modules()) == 2 * len(decoder.layers)
    assert not any(isinstance(m, Int8Linear) for m in base.model.modules())
    clips = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))[:2]]
    with torch.inference_mode():
        together = encoder(int8.feature_extractor(clips))
        alone = encoder(int8.feature_extractor(clips[1:]))
        reference = base.model.model.encoder(base.feature_extractor(clips[1:]))
    assert torch.equal(together[1:], alone)
    assert (alone - reference).norm() / reference.norm() < 0.1


@pytest.mark.parametrize("attention", [torch.float32, torch.bfloat16])
def test_int8_encoder_attention_in_either_dtype_keeps_speculation_lossless(base, attention):
    """The int8 encoder's attention runs in bfloat16 on CPUs with AMX, else float32
    (``quantization.encoder_attention_dtype``); both are forced here, whatever this CPU has: the encoding
    stays near float32's and independent of its batch, and int8 speculation equals int8 greedy."""
    from whisper_spec.model import WhisperModel

    speculative = WhisperModel("base", compute_type="int8")
    greedy = speculative.with_draft(None)
    encoder = speculative.checkpoint.model.model.encoder
    assert {layer.self_attn.attention_dtype for layer in encoder.layers} == {quantization.encoder_attention_dtype()}
    clips = [load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))[:3]]
    try:
        for layer in encoder.layers:
            layer.self_attn.attention_dtype = attention
        with torch.inference_mode():
            together = encoder(base.feature_extractor(clips[:2]))
            alone = encoder(base.feature_extractor(clips[1:2]))
            reference = base.model.model.encoder(base.feature_extractor(clips[1:2]))
        assert torch.equal(together[1:], alone)
        assert (alone - reference).norm() / reference.norm() < 0.1
        for clip in clips:
            ours = speculative.transcribe(clip, language="en")
            assert ours.tokens == greedy.transcribe(clip, language="en").tokens and len(ours.text.split()) > 3
    finally:
        for layer in encoder.layers:
            layer.self_attn.attention_dtype = quantization.encoder_attention_dtype()


def test_int8_compute_type_resolves_on_a_cpu_only():
    resolved = resolve_compute_type("int8", "cpu")
    assert resolved.int8 and resolved.dtype == torch.float32 and resolved.name == "int8"
    with pytest.raises(ValueError, match="int8 runs on a CPU"):
        resolve_compute_type("int8", "cuda")
    with pytest.raises(ValueError, match="int8 weights run on a CPU"):
        load_whisper("base", dtype=torch.bfloat16, int8=True)
