"""Position-exact attention and activation: a query row's result is the same bits whatever pass, batch or
mask computes it; its sums are exact where the module says they are; it stays close to float attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from whisper_spec import exact_attention
from whisper_spec.exact_attention import (
    Packed,
    attention,
    pack_keys,
    pack_values,
    pack_window_keys,
    pack_window_values,
    row_invariant_gelu,
)

HEADS, DIM = 8, 64


def _window(batch: int = 1, frames: int = 1500, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, HEADS, frames, DIM, generator=generator)
    v = torch.randn(batch, HEADS, frames, DIM, generator=generator)
    return k, v, Packed.of(_packed_window_keys(k), transposed=True), Packed.of_window_values(_packed_window_values(v))


def _merged(x):
    """[b, H, S, Dh] -> [b, S, H * Dh], the layout a map's output has before its heads are split."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _packed_window_keys(k):
    b, heads, frames, dim = k.shape
    return pack_window_keys(_merged(k), heads, torch.empty(b, heads, dim + 1, frames))


def _packed_window_values(v):
    b, heads, frames, dim = v.shape
    return pack_window_values(_merged(v), heads, torch.empty(b, heads, frames + 1, dim, dtype=torch.float64))


def test_window_packing_gives_per_key_and_per_channel_grids():
    """The window's keys: pack_keys' numbers, transposed; its values: integers per channel within the
    value grid, with the channel's largest magnitude on its edge."""
    k, v, _, _ = _window(batch=2, frames=300)
    assert torch.equal(_packed_window_keys(k), pack_keys(k).transpose(-1, -2))
    packed = _packed_window_values(v)
    ints, scale = packed[..., :-1, :], packed[..., -1:, :]
    assert torch.equal(ints, ints.round()) and int(ints.abs().amax()) == exact_attention._VALUE_LEVELS
    assert torch.equal(ints.abs().amax(dim=-2), torch.full(scale.shape[:-2] + scale.shape[-1:],
                                                           float(exact_attention._VALUE_LEVELS), dtype=torch.float64))
    assert (ints * scale - v.double()).abs().max() <= scale.max() / 2 * (1 + 1e-9)


def test_a_windows_queries_get_the_same_bits_alone_in_a_pass_or_in_a_batch():
    k, v, keys, values = _window(batch=2)
    q = torch.randn(2, HEADS, 9, DIM) * 1.5
    together = attention(q, keys, values)
    for row in range(2):
        one_row = Packed(keys.ints[row: row + 1], keys.scale[row: row + 1])
        row_values = Packed(values.ints[row: row + 1], values.scale[row: row + 1], per_channel=True)
        for start, count in ((0, 1), (4, 1), (8, 1), (2, 3), (0, 9)):
            alone = attention(q[row: row + 1, :, start: start + count], one_row, row_values)
            assert torch.equal(alone, together[row: row + 1, :, start: start + count])


def test_cached_queries_under_a_causal_mask_get_the_bits_of_a_step_over_their_prefix():
    """A verify pass (T queries over a cache, masked) against one-token steps (each over its own prefix,
    no mask), in a batch of rows at different lengths as a batched verify pass sees them."""
    generator = torch.Generator().manual_seed(1)
    slots, t = 60, 6
    k = pack_keys(torch.randn(2, HEADS, slots, DIM, generator=generator))
    v = pack_values(torch.randn(2, HEADS, slots, DIM, generator=generator))
    q = torch.randn(2, HEADS, t, DIM, generator=generator)
    starts = torch.tensor([20, 41])
    positions = starts[:, None] + torch.arange(t)
    keys_read = int(positions.max()) + 1
    mask = (torch.arange(keys_read)[None, None, :] <= positions[:, :, None])[:, None]
    together = attention(q, Packed.of(k[:, :, :keys_read]), Packed.of(v[:, :, :keys_read]), mask)
    for row in range(2):
        for i in range(t):
            p = int(positions[row, i]) + 1
            step = attention(q[row: row + 1, :, i: i + 1], Packed.of(k[row: row + 1, :, :p]),
                             Packed.of(v[row: row + 1, :, :p]))
            assert torch.equal(step, together[row: row + 1, :, i: i + 1])


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_it_stays_close_to_float_attention(scale):
    k, v, keys, values = _window(seed=2)
    q = torch.randn(1, HEADS, 5, DIM) * scale
    reference = F.scaled_dot_product_attention(q, k, v)
    error = (attention(q, keys, values) - reference).abs().max()
    assert error < 0.01 * reference.abs().max()
    cached = attention(q, Packed.of(pack_keys(k)), Packed.of(pack_values(v)))  # per-key value scales
    assert (cached - reference).abs().max() < 0.01 * reference.abs().max()


def test_the_integer_products_are_exact_at_their_extremes():
    levels = exact_attention._query_key_levels(DIM)
    assert levels ** 2 * DIM <= 2 ** 24 < (levels + 1) ** 2 * DIM
    ints = torch.full((1, 1, 1, DIM), float(levels))
    # a float32 product summed any way is exact up to 2**24: the largest score must come out exactly
    assert torch.matmul(ints, ints.transpose(-1, -2)).item() == levels ** 2 * DIM
    k = pack_keys(torch.full((1, 1, 3, DIM), -7.0))
    assert torch.equal(k[..., :DIM], torch.full((1, 1, 3, DIM), -float(levels)))


def test_more_keys_than_exact_sums_allow_are_refused():
    frames = 2 ** 14 + 1
    q = torch.zeros(1, 1, 1, DIM)
    keys = Packed(torch.zeros(1, 1, frames, DIM), torch.ones(1, 1, frames))
    with pytest.raises(ValueError, match="no longer be exact"):
        attention(q, keys, Packed(torch.zeros(1, 1, frames, DIM, dtype=torch.float64),
                                  torch.ones(1, 1, frames, dtype=torch.float64)))


def test_the_softmax_table_falls_from_one_to_zero():
    table = exact_attention._weight_table()
    assert table[0] == round(2 ** 24 * math.exp(-0.5 / exact_attention.STEPS_PER_UNIT))
    assert table[-1] == 0 and table[-2] > 0
    assert bool((table[1:] <= table[:-1]).all()) and torch.equal(table, table.round())


@pytest.mark.parametrize("width", [2048, 100])
def test_gelu_rows_are_the_same_bits_in_any_company(width):
    x = torch.randn(70, width) * 3
    together = row_invariant_gelu(x)
    assert torch.allclose(together, F.gelu(x), atol=1e-6)
    for start, rows in ((0, 1), (13, 1), (5, 7), (0, 33), (1, 69)):
        assert torch.equal(row_invariant_gelu(x[start: start + rows]), together[start: start + rows])
