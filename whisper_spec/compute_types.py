"""Compute types, named as faster-whisper names them: what each means for a target, and where it runs.

Importing this module does not import torch (the command line lists the names in its ``--help``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ComputeType:
    """A compute type resolved for a device."""

    name: str  # "float32", "float16", "bfloat16" or "int8" ("default" resolved)
    dtype_name: str  # torch dtype of activations and of every weight not quantized
    int8: bool = False  # the encoder's linear maps run on int8 weights (see COMPUTE_TYPES)

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)


COMPUTE_TYPES = {name: ComputeType(name, name) for name in ("float32", "float16", "bfloat16")}
# int8: the encoder's linear maps, and the decoder's projections of the encoder outputs to cross-attention
# keys and values, on int8 weights (whisper_spec.quantization); everything else float32. The decoder's
# steps stay float32: with int8 activations, the last-bit differences between a verify pass's attention
# and a one-token step's push some values to neighbouring int8 levels, and the top-two logit margins of
# the two paths then differed far more than float32's rounding (measured on real speech, see
# evaluation/results/measurements-behind-the-defaults.md), which would break speculation's equality with
# greedy decoding. What is quantized runs once per window, the same way for both.
COMPUTE_TYPES["int8"] = ComputeType("int8", "float32", int8=True)


def resolve_compute_type(name: str, device) -> ComputeType:
    """The ``ComputeType`` a name means on ``device`` (a torch device or its name).

    ``"default"`` is float16 on CUDA and float32 elsewhere; float16 runs only on CUDA (CPU half-precision
    matmuls are slow and not what faster-whisper offers there); int8 (int8 weights, float32 activations:
    faster-whisper's ``int8`` on a CPU) only on a CPU with oneDNN.

    Raises:
        ValueError: an unknown compute type, or one the device cannot run.
    """
    import torch

    from whisper_spec import quantization

    device = torch.device(device)
    if name == "default":
        name = "float16" if device.type == "cuda" else "float32"
    if name not in COMPUTE_TYPES:
        raise ValueError(f"unknown compute type {name!r}: choose default, {', '.join(COMPUTE_TYPES)}")
    if name == "float16" and device.type != "cuda":
        raise ValueError("compute type float16 needs a CUDA device; use float32, bfloat16 or int8 on the CPU")
    if name == "int8" and not quantization.can_run(device):
        raise ValueError(f"compute type int8 runs on a CPU with oneDNN (torch.backends.mkldnn), not on {device}")
    return COMPUTE_TYPES[name]


def compute_dtype(name: str, device) -> torch.dtype:
    """The torch dtype of activations at compute type ``name`` on ``device`` (see ``resolve_compute_type``)."""
    return resolve_compute_type(name, device).dtype
