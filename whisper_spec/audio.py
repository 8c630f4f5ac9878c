"""Reading audio files into the 16 kHz mono float32 arrays that Whisper consumes.

soundfile (libsndfile) reads WAV, FLAC, OGG/Vorbis/Opus and MP3 itself; ffmpeg, when it is on PATH,
decodes everything else (m4a, webm, ...). Resampling is soxr's HQ filter called directly: the samples
librosa's default gave, without importing librosa (its first call cost a fresh process seconds). Every way
a file can fail to give audio raises `AudioLoadError`, whose one-line message names the file and the reason.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # Hz: the rate every Whisper model was trained on

# libsndfile logs "data : <declared> (should be <present>)" when a WAV's data chunk is cut short.
_SHORT_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers (ffmpeg to a pipe, arecord) leave a placeholder this large or larger as the size.
_PLACEHOLDER_CHUNK_SIZE = 0x7FFF0000
# libsndfile estimates an MP3's frame count when the file has no Xing/Info header: allow that much slack.
_MP3_FRAME_COUNT_SLACK = 0.02


class AudioLoadError(ValueError):
    """A file that does not hold readable audio: missing, empty, truncated, corrupt or not audio."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(reason.split())  # one line, whatever the decoder printed
        super().__init__(f"cannot load audio from {self.path}: {self.reason}")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 at `sample_rate` (channels averaged), shape [n_samples].

    Raises AudioLoadError for a missing, empty, truncated or unreadable file, and for one with no samples.
    """
    path = _checked_path(path)
    try:
        audio, native_rate = _read_with_soundfile(path)
    except _Unreadable as soundfile_failure:
        audio, native_rate = _read_with_ffmpeg(path, soundfile_failure.reason)
    if audio.shape[0] == 0:
        raise AudioLoadError(path, "the file contains no audio samples")
    mono = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if native_rate != sample_rate:
        mono = _resample(mono, native_rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _resample(mono: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    """soxr HQ resampling of `mono` [n] to [ceil(n * sample_rate / native_rate)] samples.

    The length is fixed the way librosa.resample fixes it (zero-padded or trimmed), so the samples are the ones
    librosa's default `soxr_hq` gave before: transcripts do not move.
    """
    out = soxr.resample(mono, native_rate, sample_rate, quality="soxr_hq")
    n_samples = int(np.ceil(mono.shape[0] * float(sample_rate) / native_rate))
    if out.shape[0] >= n_samples:
        return out[:n_samples]
    return np.pad(out, (0, n_samples - out.shape[0]))


def audio_duration(path: str | os.PathLike) -> float:
    """Length of an audio file in seconds, read from its header where possible.

    Nothing is decoded when the header tells the length, so damage past the header (a cut-off MP3)
    shows only in `load_audio`; a missing, empty, non-audio or cut-off WAV file raises AudioLoadError here too.
    """
    path = _checked_path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            _check_data_chunk(path, f)
            if f.frames > 0:
                return f.frames / f.samplerate
    except sf.LibsndfileError:
        pass
    probed = _probe_duration(path)
    if probed is not None:
        return probed
    return load_audio(path).shape[0] / SAMPLE_RATE


class _Unreadable(Exception):
    """soundfile could not open the file; ffmpeg may still decode it."""

    def __init__(self, reason: str):
        self.reason = reason


def _checked_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise AudioLoadError(path, "no such file")
    if path.is_dir():
        raise AudioLoadError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioLoadError(path, "the file is empty (0 bytes)")
    return path


def _read_with_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """Decode with libsndfile: ([n_samples, n_channels] float32, native rate)."""
    try:
        with sf.SoundFile(str(path)) as f:
            declared_frames = f.frames
            audio = f.read(dtype="float32", always_2d=True)
            _check_complete(path, f, declared_frames, audio.shape[0])
            return audio, f.samplerate
    except sf.LibsndfileError as error:
        raise _Unreadable(error.error_string) from error


def _check_complete(path: Path, f: sf.SoundFile, declared_frames: int, read_frames: int) -> None:
    """libsndfile reads a cut-off file without complaint; compare what was decoded with the header."""
    _check_data_chunk(path, f)
    slack = _MP3_FRAME_COUNT_SLACK * declared_frames if f.format == "MPEG" else 0
    if read_frames < declared_frames - slack:
        raise AudioLoadError(
            path, f"truncated: the header declares {declared_frames} frames but only {read_frames} could be decoded"
        )


def _check_data_chunk(path: Path, f: sf.SoundFile) -> None:
    """A WAV whose data chunk is shorter than its header says was cut off (libsndfile only logs it)."""
    for declared, present in _SHORT_DATA_CHUNK.findall(f.extra_info):
        if int(present) < int(declared) < _PLACEHOLDER_CHUNK_SIZE:
            raise AudioLoadError(
                path, f"truncated: the header declares {declared} bytes of audio data but only {present} are present"
            )


def _read_with_ffmpeg(path: Path, soundfile_reason: str) -> tuple[np.ndarray, int]:
    """Decode with the ffmpeg program to a float WAV on a pipe, keeping the native rate and channels."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioLoadError(
            path, f"not a format soundfile can read ({soundfile_reason}), and ffmpeg is not on PATH to try"
        )
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-f", "wav", "-acodec", "pcm_f32le", "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    ffmpeg_message = _last_line(result.stderr.decode("utf-8", "replace")).removeprefix(f"{path}: ")
    if result.returncode != 0 or ffmpeg_message:
        # at "-v error" ffmpeg only speaks about damage, even when it decoded part of the file
        raise AudioLoadError(
            path, f"not a readable audio file (soundfile: {soundfile_reason}; ffmpeg: {ffmpeg_message})"
        )
    try:
        # ffmpeg cannot seek back into a pipe, so the WAV's sizes are placeholders; libsndfile reads to the end.
        audio, native_rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    except sf.LibsndfileError as error:
        raise AudioLoadError(path, f"ffmpeg produced no audio ({error.error_string})") from error
    return audio, native_rate


def _probe_duration(path: Path) -> float | None:
    """The container's duration as ffprobe reports it, or None when ffprobe is absent or has none."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    command = [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        duration = float(result.stdout.strip())
    except ValueError:
        return None
    return duration if result.returncode == 0 and duration > 0 else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
