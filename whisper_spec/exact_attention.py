"""Attention whose every query row is the same bits however many queries share the pass.

A verify pass scores k + 1 tokens at once where greedy decoding scores one; float attention kernels
block and sum differently for the two, so their results differ in the last bits, and int8 activations
downstream turn those bits into whole quantization levels. Here no sum depends on its order:

- queries and keys are rounded to integers on a grid of their own (a scale per query or key and head):
  their products summed in float32 are exact while ``levels**2 * head_dim <= 2**24``;
- a score's exponential comes from a table, indexed by its distance to the row's largest score in steps
  of 1/``STEPS_PER_UNIT`` (a lookup, not a vectorized or scalar ``exp`` that round differently): integer
  weights, summed exactly in float64;
- values are integers on a grid of their own, with a scale per channel (a window's values, written once:
  the weighted sums of integers are exact in float64 and the scale multiplies the result) or per key
  (a cache that grows: each weight times its value's scale is rounded to an integer on the row's own
  grid first).

Every other step is one correctly rounded elementwise operation or a maximum, which no blocking changes.
What it costs in accuracy is the grids (keys and queries to about a thousandth, values to 2**-15 of
their range, exponents to ``1/STEPS_PER_UNIT``), far finer than the int8 activations of the maps around it.

Keys and values are kept packed, the integers and their scales in one tensor (keys in float32, values in
float64, the width their exact products need), so that a cache stores them as it stores float ones.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from whisper_spec.scalars import scalar

__all__ = ["pack_keys", "pack_values", "pack_window_keys", "pack_window_values", "Packed", "attention",
           "row_invariant_gelu"]

_TINY = 1e-30  # scale floor: an all-zero row packs to zeros instead of dividing by zero
STEPS_PER_UNIT = 4096  # exponent grid of the softmax table
_WEIGHT_ONE = 2.0 ** 24  # the largest score's weight; weights are integers up to this
_VALUE_LEVELS = 2 ** 15 - 1
_FLOAT64_EXACT = 2.0 ** 53
_ROWS_PER_CALL = 32768  # TensorIterator's grain: a smaller elementwise call runs as one loop, on one thread


def _query_key_levels(head_dim: int) -> int:
    """The largest L with L * L * head_dim <= 2**24 (every partial sum of the product is an exact float32)."""
    return math.isqrt(2 ** 24 // head_dim)


def _round_to_grid(x: Tensor, levels: int, dim: int = -1) -> tuple[Tensor, Tensor]:
    """x -> (integers in [-levels, levels], scale with ``dim`` kept as 1) with x ~ integers * scale."""
    amax = x.abs().amax(dim=dim, keepdim=True).clamp_min_(_TINY)
    levels = scalar(levels, x.dtype)
    return x.mul(amax.reciprocal().mul_(levels)).round_(), torch.div(amax, levels)  # (levels / amax, unwrapped)


def pack_keys(k: Tensor) -> Tensor:
    """Keys [..., S, Dh] float -> packed [..., S, Dh + 1] float32 (each key's integers, then its scale)."""
    ints, scale = _round_to_grid(k.float(), _query_key_levels(k.shape[-1]))
    return torch.cat([ints, scale], dim=-1)


def pack_values(v: Tensor) -> Tensor:
    """Values [..., S, Dh] float -> packed [..., S, Dh + 1] float64 (each value's integers, then its scale)."""
    ints, scale = _round_to_grid(v.double(), _VALUE_LEVELS)
    return torch.cat([ints, scale], dim=-1)


def _heads_transposed(x: Tensor, heads: int) -> Tensor:
    """[n, S, H * Dh] -> [n, H, Dh, S] contiguous, one window at a time: a two-dimensional transpose runs
    as a blocked copy, a batched one does not."""
    n, frames, width = x.shape
    out = x.new_empty(n, width, frames)
    for window in range(n):
        out[window].copy_(x[window].t())
    return out.view(n, heads, width // heads, frames)


def pack_window_keys(k: Tensor, heads: int, out: Tensor) -> Tensor:
    """A window's keys [n, S, H * Dh] float32 -> ``out`` [n, H, Dh + 1, S] float32: ``pack_keys``' numbers
    for each head, transposed (per key, its integers down a column, then its scale), which every step's
    product reads faster. Transposed first, so that every later pass reads and writes whole rows."""
    kt = _heads_transposed(k, heads)  # [n, H, Dh, S]
    levels = _query_key_levels(kt.shape[-2])
    amax = kt.abs().amax(dim=-2, keepdim=True).clamp_min_(_TINY)  # [n, H, 1, S]
    torch.mul(kt, amax.reciprocal().mul_(levels), out=out[..., :-1, :]).round_()
    torch.div(amax.squeeze(-2), levels, out=out[..., -1, :])
    return out


def pack_window_values(v: Tensor, heads: int, out: Tensor) -> Tensor:
    """A window's values [n, S, H * Dh] float32, all known at once -> ``out`` [n, H, S + 1, Dh] float64: per
    head, the integers of every value (a row per key), then a row of the channels' scales. Rows of keys
    are what the weighted sum's product reads fastest (a column per key reads at a third of the speed
    once a pass has several queries)."""
    n, frames, width = v.shape
    heads_first = v.view(n, frames, heads, width // heads).transpose(1, 2)  # [n, H, S, Dh]
    amax = heads_first.abs().amax(dim=-2, keepdim=True).double().clamp_min_(_TINY)  # [n, H, 1, Dh], exact
    torch.mul(heads_first, amax.reciprocal().mul_(_VALUE_LEVELS), out=out[..., :-1, :]).round_()
    torch.div(amax.squeeze(-2), _VALUE_LEVELS, out=out[..., -1, :])
    return out


class Packed(NamedTuple):
    """Keys or values as integers on a grid and the grid's scales: views of a packed tensor."""

    ints: Tensor  # [b, H, S, Dh], any strides
    scale: Tensor  # [b, H, S] per key, or [b, H, Dh] per channel
    per_channel: bool = False

    @classmethod
    def of(cls, packed: Tensor, transposed: bool = False) -> Packed:
        """From ``pack_keys``/``pack_values``' [b, H, S, Dh + 1], or ``pack_window_keys``' [b, H, Dh + 1, S]
        when ``transposed``."""
        if transposed:
            return cls(packed[..., :-1, :].transpose(-1, -2), packed[..., -1, :])
        return cls(packed[..., :-1], packed[..., -1])

    @classmethod
    def of_window_values(cls, packed: Tensor) -> Packed:
        """From ``pack_window_values``' [b, H, S + 1, Dh]."""
        return cls(packed[..., :-1, :], packed[..., -1, :], per_channel=True)


@functools.cache
def _weight_table() -> Tensor:
    """[n] float64 integers: round(2**24 * exp(-(i + 1/2) / STEPS_PER_UNIT)) (the middle of step i), the
    last entry the first zero."""
    span = math.ceil(math.log(2 * _WEIGHT_ONE) * STEPS_PER_UNIT) + 1  # past the last weight that rounds above 0
    steps = torch.arange(span, dtype=torch.float64)
    table = torch.round(_WEIGHT_ONE * torch.exp(-(steps + 0.5) / STEPS_PER_UNIT))
    return table[: int((table > 0).sum()) + 1]


def attention(q: Tensor, keys: Packed, values: Packed, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v, each query row's result the same bits whatever else is in the pass.

    Args:
        q: [b, H, T, Dh] float32 queries (not yet scaled).
        keys: from ``pack_keys`` (float32), S keys.
        values: from ``pack_values`` or ``pack_window_values`` (float64), S values.
        mask: [b, 1, T, S] bool, True where a query sees a key (default: every key); each query must see one.
    Returns:
        [b, H, T, Dh] float32.
    """
    dh = q.shape[-1]
    frames = keys.ints.shape[-2]
    if frames * _WEIGHT_ONE * _VALUE_LEVELS > _FLOAT64_EXACT:
        raise ValueError(f"{frames} keys: the weighted sums of values would no longer be exact in float64")
    q_ints, q_scale = _round_to_grid(q.float(), _query_key_levels(dh))
    scores = torch.matmul(q_ints, keys.ints.transpose(-1, -2)).mul_(keys.scale[..., None, :])  # [b, H, T, S]
    if mask is not None:
        scores.masked_fill_(~mask, -math.inf)
    # each score's distance below the row's largest, in table steps (-inf lands on the table's final zero)
    per_step = q_scale.mul_(scalar(STEPS_PER_UNIT * dh ** -0.5))
    steps = torch.rsub(scores, scores.amax(dim=-1, keepdim=True)).mul_(per_step)
    table = _weight_table()
    weights = table.take(steps.clamp_(max=table.shape[0] - 1).long())  # [b, H, T, S] float64 integers
    total = weights.sum(dim=-1, keepdim=True)  # exact: integers below 2**53
    if values.per_channel:
        out = torch.matmul(weights, values.ints)  # exact: |sum| < frames * 2**24 * 2**15 <= 2**53
        return out.mul_(values.scale[..., None, :]).div_(total).float()
    weights.mul_(values.scale[..., None, :])  # exact: a 25-bit integer times a float32 scale
    grid = weights.amax(dim=-1, keepdim=True).reciprocal_().mul_(scalar(_WEIGHT_ONE, torch.float64))  # 2**24 / amax
    weights.mul_(grid).round_()  # integers up to 2**24 on the row's own grid
    out = torch.matmul(weights, values.ints)  # exact, as above
    return out.div_(grid.mul_(total)).float()


def row_invariant_gelu(x: Tensor) -> Tensor:
    """GELU of x [n, W] whose row i is the same bits whatever n is.

    A vectorized elementwise loop computes its last few elements with the scalar function, whose rounding
    differs, and splits a large call across threads at a point set by the call's size: so a row's bits
    could depend on the rows beside it. Calls of whole rows under TensorIterator's grain, W a multiple of
    the vector width, have no scalar tail and no split; other widths go row by row.
    """
    n, width = x.shape
    rows = max(1, _ROWS_PER_CALL // width) if width % 32 == 0 else 1
    if n <= rows:
        return torch.nn.functional.gelu(x)
    return torch.cat([torch.nn.functional.gelu(x[i: i + rows]) for i in range(0, n, rows)])
