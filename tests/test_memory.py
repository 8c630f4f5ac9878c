"""Once ``reuse_freed_memory`` has run, a window's pass reuses freed memory instead of faulting pages in."""

from __future__ import annotations

import resource
import sys

import pytest
import torch
from conftest import LIBRIVOX

from whisper_spec.audio import load_audio
from whisper_spec.memory import reuse_freed_memory
from whisper_spec.whisper.checkpoints import load_whisper

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@torch.inference_mode()
def test_an_encoder_pass_over_a_real_window_takes_almost_no_page_faults():
    assert reuse_freed_memory()
    target = load_whisper("base", int8=True)
    features = target.feature_extractor([load_audio(sorted(LIBRIVOX.glob("*.wav"))[0])])
    for _ in range(2):  # the first passes grow the heap to what a pass needs
        target.model.model.encoder(features)
    faults = []
    for _ in range(3):
        before = _page_faults()
        target.model.model.encoder(features)
        faults.append(_page_faults() - before)
    # without it, glibc maps and unmaps the 12-MiB activations: tens of thousands of faults a pass
    assert min(faults) < 1000, faults
