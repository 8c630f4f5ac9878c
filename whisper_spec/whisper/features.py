"""From 16 kHz audio windows to encoder outputs: log-mel features, then the encoder, once per window."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from whisper_spec.audio import SAMPLE_RATE
from whisper_spec.core.stats import synchronize

WINDOW_SECONDS = 30  # Whisper's encoder always sees 30 s (3000 mel frames), padded with zeros
N_FFT = 400  # 25-ms windows
HOP_LENGTH = 160  # samples per mel frame (10 ms)
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE


def _slaney_mel(hertz: np.ndarray) -> np.ndarray:
    mels = 3.0 * hertz / 200.0
    log_region = hertz >= 1000.0
    mels[log_region] = 15.0 + np.log(hertz[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _slaney_hertz(mels: np.ndarray) -> np.ndarray:
    hertz = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    hertz[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - 15.0))
    return hertz


def mel_filters(n_mels: int) -> np.ndarray:
    """[N_FFT // 2 + 1, n_mels] float64 Slaney-scale, area-normalised triangular filters over 0-8 kHz:
    librosa's ``filters.mel(norm="slaney")``, which openai/whisper and transformers use, computed the way
    transformers' ``mel_filter_bank`` computes it (the same float64 operations)."""
    bins = N_FFT // 2 + 1
    edges = _slaney_hertz(np.linspace(_slaney_mel(np.array([0.0]))[0], _slaney_mel(np.array([8000.0]))[0], n_mels + 2))
    slopes = edges[None, :] - np.linspace(0, SAMPLE_RATE // 2, bins)[:, None]
    widths = np.diff(edges)
    filters = np.maximum(np.zeros(1), np.minimum(-slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]))
    return filters * (2.0 / (edges[2: n_mels + 2] - edges[:n_mels]))[None, :]


class LogMel:
    """Whisper's front end: 16 kHz audio -> log-mel features of 30-s windows, the same numbers as
    transformers' ``WhisperFeatureExtractor`` (its torch path), without importing transformers."""

    sampling_rate = SAMPLE_RATE

    def __init__(self, n_mels: int):
        self.feature_size = n_mels
        self._filters = torch.from_numpy(mel_filters(n_mels)).float()
        self._window = torch.hann_window(N_FFT)

    def __call__(self, audio: Sequence[np.ndarray]) -> Tensor:
        """B mono float waveforms (each cut or zero-padded to 30 s) -> [B, n_mels, 3000] float32 features."""
        batch = np.zeros((len(audio), WINDOW_SAMPLES), dtype=np.float32)
        for row, samples in enumerate(audio):
            samples = np.asarray(samples, dtype=np.float32)[:WINDOW_SAMPLES]
            batch[row, : samples.shape[0]] = samples
        stft = torch.stft(torch.from_numpy(batch), N_FFT, HOP_LENGTH, window=self._window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log_spec = torch.clamp(self._filters.T @ power, min=1e-10).log10()
        floor = log_spec.max(dim=2, keepdim=True)[0].max(dim=1, keepdim=True)[0] - 8.0
        return (torch.maximum(log_spec, floor) + 4.0) / 4.0


def log_mel(checkpoint, audio: Sequence[np.ndarray]) -> Tensor:
    """B windows of 16 kHz mono audio -> [B, n_mels, 3000] features in the model's dtype and device."""
    weight = checkpoint.model.model.encoder.conv1.weight
    return checkpoint.feature_extractor(audio).to(device=weight.device, dtype=weight.dtype)


@torch.inference_mode()
def encode_audio(checkpoint, audio: Sequence[np.ndarray]) -> tuple[Tensor, float]:
    """Run the checkpoint's encoder on B windows: returns ([B, 1500, D] hidden states, seconds spent)."""
    features = log_mel(checkpoint, audio)
    device = features.device
    synchronize(device)
    start = time.perf_counter()
    hidden = checkpoint.model.model.encoder(features)
    synchronize(device)
    return hidden, time.perf_counter() - start
