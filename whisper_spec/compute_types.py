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

    name: str  # "float32", "float16", "bfloat16", "int8" or "int8_encoder" ("default" resolved)
    dtype_name: str  # torch dtype of activations and of every weight not quantized
    int8: bool = False  # the encoder's linear maps run on int8 weights (see COMPUTE_TYPES)
    int8_decoder: bool = False  # and so do the decoder's

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)


COMPUTE_TYPES = {name: ComputeType(name, name) for name in ("float32", "float16", "bfloat16")}
# int8, as faster-whisper's: every linear map of the encoder and the decoder (the output projection too)
# on int8 weights, activations quantized row by row (whisper_spec.quantization), everything else float32.
# The decoder's passes are position-exact (whisper_spec.whisper.int8_decoder): a verify pass gives every
# position the bits a one-token step gives it, which int8 activations need for speculation to stay
# lossless (a float decoder's last-bit differences move int8 levels; see
# evaluation/results/measurements-behind-the-defaults.md).
COMPUTE_TYPES["int8"] = ComputeType("int8", "float32", int8=True, int8_decoder=True)
# int8_encoder: the encoder's linear maps, and the decoder's projections of the encoder outputs to
# cross-attention keys and values (once per window), on int8 weights; the decoder's passes float32. On
# small models (base) speculation runs faster so, since an int8 verify pass costs more than a float one there.
COMPUTE_TYPES["int8_encoder"] = ComputeType("int8_encoder", "float32", int8=True)

# what a command line's --compute-type says of them
HELP = ("precision, named as faster-whisper names it: default (float16 on CUDA, float32 on a CPU), float32, "
        "bfloat16 (where the CPU supports it), float16 (CUDA only), int8 (CPU: every linear map of the encoder "
        "and the decoder on int8 weights) or int8_encoder (CPU: the encoder on int8 weights, the decoder "
        "float32; faster speculation on small models)")


def resolve_compute_type(name: str, device) -> ComputeType:
    """The ``ComputeType`` a name means on ``device`` (a torch device or its name).

    ``"default"`` is float16 on CUDA and float32 elsewhere; float16 runs only on CUDA (CPU half-precision
    matmuls are slow and not what faster-whisper offers there); int8 (int8 weights, float32 activations:
    faster-whisper's ``int8`` on a CPU) and int8_encoder only on a CPU with oneDNN.

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
    if COMPUTE_TYPES[name].int8 and not quantization.can_run(device):
        raise ValueError(f"compute type {name} runs on a CPU with oneDNN (torch.backends.mkldnn), not on {device}")
    return COMPUTE_TYPES[name]


def compute_dtype(name: str, device) -> torch.dtype:
    """The torch dtype of activations at compute type ``name`` on ``device`` (see ``resolve_compute_type``)."""
    return resolve_compute_type(name, device).dtype
