"""Linear maps on int8 weights: a target's at the int8 compute types (``Int8Linear`` in its encoder,
``Int8Projection`` in its int8 decoder).

As in faster-whisper's int8 (CTranslate2), each weight row (output channel) has its own scale, each
input row (a frame or token) is quantized with its own scale when the map is called, the products are
summed in integers and the sum is rescaled to float32. Per-row activation scales keep a row with large
values from coarsening every other row's (fbgemm's dynamic linear, which drafts use for its speed at one
row, see ``whisper_spec.projection``, takes one scale per call), and since int8 products summed in int32
are exact and every later step is elementwise, a row's output is the same bits whatever rows share the
call and however the kernel blocks the product.

The kernel is oneDNN's u8 x s8 -> s32 product on a weight packed once (activations shifted by 128).
Exact sums need int8 instructions that do not saturate: VNNI and AMX accumulate into int32; AVX2 alone
adds pairs of products in saturating int16, so there weights keep 7 bits, which no pair can overflow.
``weight_bits()`` finds out which holds, once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from whisper_spec.memory import release_pages
from whisper_spec.scalars import scalar

_SHIFT = 128  # activations are stored as uint8 = q + 128 (oneDNN's fast path is u8 x s8)
_ROUNDING = 1.5 * 2.0**23 + _SHIFT  # see quantize_rows
_ROUNDING_BITS = 0x4B400000  # the bits of the float32 1.5 * 2**23
_TINY = 1e-30  # scale floor: an all-zero row quantizes to zeros instead of dividing by zero


def can_run(device: torch.device | str) -> bool:
    """Whether int8 maps run on ``device`` (a CPU with oneDNN's quantized linear)."""
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_pointwise"))


@dataclass(frozen=True)
class Int8Weight:
    """A weight [N, K] as int8 values q and per-row scales s (w ~ q * s[:, None]), packed for oneDNN."""

    packed: Tensor  # opaque oneDNN layout of q
    scale: Tensor  # [N] float32
    bias: Tensor | None  # [N] float32
    zero_points: Tensor  # [N] long zeros (oneDNN wants them)


def _pack(q: Tensor) -> Tensor:
    return torch.ops.onednn.qlinear_prepack(q, None)


def _product(x_u8: Tensor, packed: Tensor, scale: Tensor, zero_points: Tensor) -> Tensor:
    """[M, K] uint8 (q + 128) x packed [N, K] -> [M, N] float32: the int32 sums times the weight scales."""
    return torch.ops.onednn.qlinear_pointwise(x_u8, 1.0, _SHIFT, packed, scale, zero_points, None, 1.0, 0,
                                              torch.float32, "none", [], "")


@functools.cache
def weight_bits() -> int:
    """8 where this CPU's int8 product is exact for full-range weights, else 7 (see the module docstring).

    The probe takes the worst case (every activation and weight at its extreme, so each pair of products
    exceeds int16) at one row and at many, since oneDNN picks its kernel by shape.
    """
    k, n = 256, 64
    q = torch.full((n, k), 127, dtype=torch.int8)
    ones = torch.ones(n)
    zeros = torch.zeros(n, dtype=torch.long)
    packed = _pack(q)
    for rows in (1, 5, 64):
        x = torch.full((rows, k), 255, dtype=torch.uint8)
        got = _product(x, packed, ones, zeros)
        if not torch.equal(got, torch.full((rows, n), float(127 * 127 * k))):
            return 7
    return 8


def encoder_attention_dtype() -> torch.dtype:
    """The dtype an int8 encoder's attention runs in: bfloat16 on a CPU with AMX tiles, else float32.

    With its linear maps on int8, about half of an int8 encoder's time is attention over 1500 frames, which
    float32 computes on the vector units; where AMX multiplies bfloat16 tiles, torch's flash attention runs
    it in a third of the time (measurements-behind-the-defaults.md). Elsewhere (AVX-512 BF16 alone, or
    emulated bfloat16) it was slower than float32, so it stays float32. The choice is fixed per machine, not
    timed, so a machine always gives the same transcript; each window is still encoded alone.
    """
    return torch.bfloat16 if torch.cpu._is_amx_tile_supported() else torch.float32


def quantize_weight(weight: Tensor, bias: Tensor | None = None, bits: int | None = None) -> Int8Weight:
    """weight [N, K] (and bias [N]) -> ``Int8Weight`` with ``bits``-bit values (default ``weight_bits()``)."""
    limit = 2 ** ((bits or weight_bits()) - 1) - 1
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / limit).clamp_min(_TINY)
    q = torch.round(weight / scale[:, None]).to(torch.int8)
    return Int8Weight(_pack(q.contiguous()), scale, None if bias is None else bias.detach().float().contiguous(),
                      torch.zeros(scale.shape[0], dtype=torch.long))


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] float32 -> (uint8 [M, K] = round(x * 127 / amax) + 128, rounded half to even; amax [M, 1],
    each row's largest magnitude).

    One buffer and cheap integer steps instead of round, shift and a float-to-byte conversion (see
    measurements-behind-the-defaults.md): v = x * 127 / amax lies in [-127, 127], so v + _ROUNDING lies in
    [2**23, 2**24), where float32 steps by exactly 1 and the addition rounds v half to even, as ``round``
    does; that float's bits, read as an integer, are _ROUNDING_BITS + 128 + round(v). The same bits as
    the step-by-step form (tested).
    """
    magnitude = torch.abs(x)
    amax = magnitude.amax(dim=1, keepdim=True).clamp_min_(_TINY)
    # amax.reciprocal() * 127 is what ``127 / amax`` computes, without its Python wrapper
    levels = torch.mul(x, amax.reciprocal().mul_(scalar(127.0)), out=magnitude).add_(scalar(_ROUNDING))
    return levels.view(torch.int32).sub_(scalar(_ROUNDING_BITS, torch.int32)).to(torch.uint8), amax


def int8_linear(x: Tensor, weight: Int8Weight) -> Tensor:
    """x [M, K] float32 -> [M, N] float32 ~ x @ w.T + b, each row of x quantized with its own scale.

    Row m's output depends on row m's input alone, bit for bit: after the exact integer sum, each step is
    one correctly rounded elementwise operation, whose result cannot depend on where a vectorized loop
    splits the rows (a fused multiply-add could: vector and scalar tails round it differently).
    """
    x_u8, amax = quantize_rows(x)
    y = _product(x_u8, weight.packed, weight.scale, weight.zero_points).mul_(torch.div(amax, scalar(127.0)))
    return y if weight.bias is None else y.add_(weight.bias)


class Int8Linear(nn.Module):
    """An ``nn.Linear`` run on int8 weights (see the module docstring), or several fused along the output
    dimension; the float weights are not kept."""

    def __init__(self, *linears: nn.Linear):
        super().__init__()
        self.in_features = linears[0].in_features
        self.out_features = sum(linear.out_features for linear in linears)
        weight = torch.cat([linear.weight.detach() for linear in linears])
        bias = None
        if any(linear.bias is not None for linear in linears):  # Whisper's key map has none: zeros
            bias = torch.cat([linear.bias.detach() if linear.bias is not None
                              else torch.zeros(linear.out_features, dtype=weight.dtype) for linear in linears])
        self.int8 = quantize_weight(weight, bias)
        release_pages([linear.weight for linear in linears])  # a memory-mapped checkpoint's pages go back

    def forward(self, x: Tensor) -> Tensor:
        """x [..., K] -> [..., N]"""
        y = int8_linear(x.reshape(-1, self.in_features).float(), self.int8)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(module: nn.Module, only: tuple[str, ...] | None = None) -> None:
    """Replace every ``nn.Linear`` inside ``module`` (or only its children named in ``only``) by an
    ``Int8Linear``, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and (only is None or name in only):
            setattr(module, name, Int8Linear(child))
        elif only is None:
            quantize_linears(child)


def fuse_self_attention(attention: nn.Module) -> None:
    """A self-attention's query, key and value maps (``q_proj``, ``k_proj``, ``v_proj``, which read the same
    rows) become one ``Int8Linear``, ``qkv_proj``: the rows are quantized once, not three times. Each
    output is the same bits as its own map's: the same row scales and integer sums, the same weight
    scales per output channel."""
    attention.qkv_proj = Int8Linear(attention.q_proj, attention.k_proj, attention.v_proj)
    del attention.q_proj, attention.k_proj, attention.v_proj


class Int8Projection:
    """``projection.Projection``'s interface (several linear maps fused along the output dimension, called
    on [n, D_in] rows) on int8 weights, each row of the input quantized with its own scale, so each output
    row is the same bits whatever rows share the call: what a target decoder's verify pass needs to equal
    its one-token steps. The float weights are not read again."""

    def __init__(self, linears):
        self.sizes = [linear.out_features for linear in linears]
        self.int8 = Int8Linear(*linears).int8

    def __call__(self, x: Tensor) -> list[Tensor]:
        """x [n, D_in] float32 -> one [n, D_out_i] tensor per fused linear."""
        y = int8_linear(x.contiguous(), self.int8)
        return list(y.split(self.sizes, dim=-1)) if len(self.sizes) > 1 else [y]
