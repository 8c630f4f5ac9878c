"""From 16 kHz audio windows to encoder outputs: log-mel features, then the encoder, once per window."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from whisper_spec.core.stats import synchronize

WINDOW_SECONDS = 30  # Whisper's encoder always sees 30 s (3000 mel frames), padded with zeros


def log_mel(checkpoint, audio: Sequence[np.ndarray]) -> Tensor:
    """B windows of 16 kHz mono audio -> [B, n_mels, 3000] features in the model's dtype and device."""
    extractor = checkpoint.feature_extractor
    features = extractor(list(audio), sampling_rate=extractor.sampling_rate, return_tensors="pt").input_features
    weight = checkpoint.model.model.encoder.conv1.weight
    return features.to(device=weight.device, dtype=weight.dtype)


@torch.inference_mode()
def encode_audio(checkpoint, audio: Sequence[np.ndarray]) -> tuple[Tensor, float]:
    """Run the checkpoint's encoder on B windows: returns ([B, 1500, D] hidden states, seconds spent)."""
    features = log_mel(checkpoint, audio)
    device = features.device
    synchronize(device)
    start = time.perf_counter()
    hidden = checkpoint.model.model.encoder(features).last_hidden_state
    synchronize(device)
    return hidden, time.perf_counter() - start
