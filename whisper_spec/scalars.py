"""Numbers as 0-dim tensors for the hot paths of the int8 decoder's steps.

An operation given a Python number wraps it in a tensor and casts it to the other operand's dtype on
every call, which costs several times the operation itself on a decoding step's small tensors; a 0-dim
tensor of the operand's dtype skips both, and the operation computes the same bits (the number is the
same value in that dtype either way).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["scalar"]


@functools.cache
def scalar(value: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``value`` as a 0-dim CPU tensor of ``dtype`` (one per value and dtype, never written)."""
    return torch.tensor(value, dtype=dtype)
