"""The target's decoder at the int8 compute type, whose logits at a position are the same bits whichever
pass computes them: a verify pass of k + 1 tokens, a one-token greedy step, alone or in a batch.

That is what keeps speculation lossless once activations are int8: a float decoder's verify pass and
its steps differ in the last bits (their attention kernels sum in other orders), and an int8 quantizer
turns such a difference into a whole quantization level, enough to change a near choice. Here nothing a
position computes depends on the rest of the pass: every linear map quantizes each row on its own and
sums int8 products exactly (``quantization.Int8Projection``), attention sums integers exactly
(``exact_attention``), and the MLP's activation runs in calls whose rounding cannot depend on their size.
What remains is elementwise or a per-row reduction of one row (layer norms, residual sums).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from whisper_spec.exact_attention import (
    Packed,
    attention,
    pack_keys,
    pack_values,
    pack_window_keys,
    pack_window_values,
    row_invariant_gelu,
)
from whisper_spec.quantization import Int8Projection
from whisper_spec.whisper.decoder import CachedWhisperDecoder


class Int8WhisperDecoder(CachedWhisperDecoder):
    """``CachedWhisperDecoder`` on int8 weights with position-exact passes (see the module docstring).

    Its caches hold keys and values packed by ``exact_attention`` (integers and their scales); the window's
    cross-attention keys are kept transposed, [b, H, Dh + 1, S], which its products read faster, and its
    values with a scale per channel, [b, H, S + 1, Dh].
    CPU only (int8 kernels), and no fixed-shape steps (those serve CUDA graphs).
    """

    def __init__(self, decoder: nn.Module):
        """``decoder``: the target's ``modeling.WhisperDecoder`` (its float weights are quantized, not copied)."""
        super().__init__(decoder)

    def _projection(self, linears: Sequence[nn.Linear]) -> Int8Projection:
        return Int8Projection(linears)

    def _cache_specs(self, batch: int, frames: int) -> list[tuple[torch.Size, torch.dtype]]:
        own = torch.Size((batch, self.num_heads, self.max_positions + 1, self.head_dim + 1))
        cross_keys = torch.Size((batch, self.num_heads, self.head_dim + 1, frames))
        cross_values = torch.Size((batch, self.num_heads, frames + 1, self.head_dim))
        return [(own, torch.float32), (own, torch.float64), (cross_keys, torch.float32), (cross_values, torch.float64)]

    def _store_cross(self, i: int, rows: Tensor | None, k: Tensor, v: Tensor) -> None:
        keys, values = self._cross_k[i], self._cross_v[i]
        if rows is None:  # packed where they are kept
            pack_window_keys(k, self.num_heads, out=keys)
            pack_window_values(v, self.num_heads, out=values)
        else:
            keys.index_copy_(0, rows, pack_window_keys(k, self.num_heads, keys.new_empty(len(rows), *keys.shape[1:])))
            values.index_copy_(0, rows, pack_window_values(v, self.num_heads,
                                                           values.new_empty(len(rows), *values.shape[1:])))

    def _self_cache_entries(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return pack_keys(k), pack_values(v)

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        return attention(q, Packed.of(keys), Packed.of(values), mask)

    def _attend_cross(self, q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        return attention(q, Packed.of(keys, transposed=True), Packed.of_window_values(values))

    def _activation(self, layer: nn.Module, h: Tensor) -> Tensor:
        return row_invariant_gelu(h)
