"""Linear maps that choose their kernel by the number of rows, so that a verify pass stays cheap on a CPU.

On a CPU a product of a few rows with a weight matrix (a verify pass over k + 1 tokens) runs a GEMM
kernel that costs several matrix-vector products, and that one extra cost decides whether speculation
wins at all; oneDNN with the weight reordered once into its blocked layout costs a fraction of MKL's
GEMM for those few rows, and less than MKL's GEMV for one row too on the CPUs measured
(evaluation/results/measurements-behind-the-defaults.md, ``python -m evaluation.projection_kernels``). So
a packed copy, built once, serves every call, and the original weight is no longer read: when it is
memory-mapped from a checkpoint its pages are handed back to the kernel (read again from the file only if
something else, such as word alignment, uses it), so the copy does not double the resident weights.
Without packing (a draft that runs one token at a time, a CPU without oneDNN) one row is a GEMV and a
few rows are separate GEMVs. On a GPU the plain ``F.linear`` is already right and nothing is packed.

A draft may also run with int8 weights (``int8=True``, CPU): a one-token step reads its weights once, so
a quarter of the bytes is most of a quarter of the time (fbgemm's dynamic-quantized linear: per-channel
int8 weights, activations quantized per call). A draft's precision changes only what it proposes, never
the output, which the target decides; a target never runs this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from whisper_spec.memory import release_pages

_FEW_ROWS = 4  # without packed weights, up to this many rows run as separate GEMVs (cheaper than a GEMM)


def _packed(weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def has_native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic is fast on ``device``: a GPU, or a CPU with AVX-512 BF16 or AMX
    instructions. Elsewhere oneDNN emulates it, and a bfloat16 product costs several float32 ones."""
    if device.type != "cpu":
        return True
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


def can_quantize(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cpu" and dtype == torch.float32
            and "fbgemm" in torch.backends.quantized.supported_engines)


def _quantized(weight: Tensor, bias: Tensor | None):
    """fbgemm-prepacked int8 weight [out, in] with one scale per output channel."""
    weight = weight.detach().float().contiguous()
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # the quantized-tensor constructors warn of their future; 2.13 has them
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())


class Projection:
    """One linear map, or several fused along the output dimension (e.g. query, key and value)."""

    def __init__(self, linears: Sequence[nn.Linear], pack: bool = True, int8: bool = False):
        """``pack``: keep a oneDNN-packed copy for multi-row calls (CPU float32); ``int8``: run every call
        on int8 weights instead (drafts only; CPU float32, else ignored)."""
        self.linears = list(linears)
        self.sizes = [linear.out_features for linear in self.linears]
        first = self.linears[0].weight
        if all(linear.bias is None for linear in self.linears):
            self.bias = None
        else:  # Whisper's key projection has no bias: fuse it with zeros
            self.bias = torch.cat([linear.bias.detach() if linear.bias is not None
                                   else torch.zeros(linear.out_features, device=first.device, dtype=first.dtype)
                                   for linear in self.linears])
        self.weight = None
        self.packed = None
        self.quantized = None
        if int8 and can_quantize(first.device, first.dtype):
            self.quantized = _quantized(torch.cat([linear.weight.detach() for linear in self.linears]), self.bias)
            release_pages([linear.weight for linear in self.linears])
        elif pack and can_pack(first.device, first.dtype):
            self.packed = _packed(torch.cat([linear.weight.detach() for linear in self.linears]))
            release_pages([linear.weight for linear in self.linears])
        elif len(self.linears) > 1:
            self.weight = torch.cat([linear.weight.detach() for linear in self.linears])

    def __call__(self, x: Tensor) -> list[Tensor]:
        """x [n, D_in] -> one [n, D_out_i] tensor per fused linear."""
        n = x.shape[0]
        if self.quantized is not None:
            y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self.quantized, True)
            return list(y.split(self.sizes, dim=-1)) if len(self.sizes) > 1 else [y]
        if self.packed is None and (n == 1 or (x.device.type == "cpu" and n <= _FEW_ROWS)):
            return [torch.cat([linear(x[i: i + 1]) for i in range(n)]) if n > 1 else linear(x)
                    for linear in self.linears]
        if self.packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        elif self.weight is not None:
            y = F.linear(x, self.weight, self.bias)
        else:
            return [self.linears[0](x)]
        return list(y.split(self.sizes, dim=-1))
