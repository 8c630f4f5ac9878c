"""The compute type names faster-whisper uses map to the target's precision, and bad names fail clearly."""

import pytest
import torch

from whisper_spec.model import compute_dtype


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                             ("default", torch.float32)])
def test_cpu_compute_types(name, dtype):
    assert compute_dtype(name, "cpu") == dtype


def test_default_is_float16_on_cuda():
    assert compute_dtype("default", "cuda") == torch.float16
    assert compute_dtype("float16", "cuda:0") == torch.float16


@pytest.mark.parametrize("name", ["int4", "fp32", ""])
def test_unknown_compute_type_names_the_choices(name):
    with pytest.raises(ValueError, match="unknown compute type.*float32"):
        compute_dtype(name, "cpu")


def test_float16_off_cuda_is_refused():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        compute_dtype("float16", "cpu")
