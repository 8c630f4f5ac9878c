"""whisper_spec.audio: every way a file can fail to hold audio, and real files at 8, 16 and 48 kHz."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_spec.audio import SAMPLE_RATE, AudioLoadError, audio_duration, load_audio

LIBRIVOX_CLIP = Path(
    "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav"
)  # Debian pocketsphinx-testdata: 16 kHz, 2.99 s
ALLISON_PROMPT = Path("/usr/share/asterisk/sounds/en_US_f_Allison/digits/1.wav")  # asterisk-core-sounds-en-wav: 8 kHz
ALSA_FRONT_LEFT = Path("/usr/share/sounds/alsa/Front_Left.wav")  # Debian alsa-utils: 48 kHz

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not on PATH (Debian ffmpeg)")


def installed(path: Path, debian_package: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: install the Debian package {debian_package}")
    return path


def ffmpeg_convert(source: Path, target: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), str(target)], check=True)
    return target


def tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(audio.shape[0], 1 / rate)[spectrum.argmax()])


# ---- files that hold no readable audio -------------------------------------------------------


def wav_bytes(tmp_path: Path) -> bytes:
    source = tmp_path / "source.wav"
    sf.write(source, tone(440, 1.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    return source.read_bytes()


def make_missing(tmp_path):
    return tmp_path / "missing.wav"


def make_directory(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    return tmp_path / "folder.wav"


def make_empty(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    return tmp_path / "empty.wav"


def make_truncated_header(tmp_path):
    (tmp_path / "cut_header.wav").write_bytes(wav_bytes(tmp_path)[:30])
    return tmp_path / "cut_header.wav"


def make_truncated_data(tmp_path):
    data = wav_bytes(tmp_path)
    (tmp_path / "cut_data.wav").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut_data.wav"


def make_text(tmp_path):
    (tmp_path / "notes.wav").write_text("this is a text file, not a recording\n")
    return tmp_path / "notes.wav"


def make_random_bytes(tmp_path):
    (tmp_path / "noise.flac").write_bytes(np.random.default_rng(0).bytes(4096))
    return tmp_path / "noise.flac"


def make_zero_samples(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    return tmp_path / "silent.wav"


BAD_FILES = {
    "missing": (make_missing, "no such file"),
    "directory": (make_directory, "directory"),
    "empty": (make_empty, "empty (0 bytes)"),
    "truncated header": (make_truncated_header, "not a readable audio file"),
    "truncated data": (make_truncated_data, "truncated"),
    "text named .wav": (make_text, "not a readable audio file"),
    "random bytes": (make_random_bytes, "not a readable audio file"),
    "zero samples": (make_zero_samples, "no audio samples"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_load_audio_rejects_files_without_audio(tmp_path, kind):
    make, reason = BAD_FILES[kind]
    path = make(tmp_path)
    with pytest.raises(AudioLoadError) as raised:
        load_audio(path)
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert str(path) in message and reason in message
    assert "\n" not in message
    assert raised.value.path == str(path) and reason in raised.value.reason


@pytest.mark.parametrize("kind", BAD_FILES)
def test_audio_duration_rejects_files_without_audio(tmp_path, kind):
    make, reason = BAD_FILES[kind]
    path = make(tmp_path)
    with pytest.raises(AudioLoadError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        audio_duration(path)


@needs_ffmpeg
def test_truncated_mp3_is_rejected(tmp_path):
    clip = installed(LIBRIVOX_CLIP, "pocketsphinx-testdata")
    data = ffmpeg_convert(clip, tmp_path / "whole.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioLoadError, match="truncated"):
        load_audio(tmp_path / "cut.mp3")


def test_error_names_file_and_reason_in_one_line():
    error = AudioLoadError("/data/a.wav", "first line\nsecond line")
    assert str(error) == "cannot load audio from /data/a.wav: first line second line"


# ---- real speech -------------------------------------------------------------------------------


def test_librivox_clip_at_16khz_loads_unchanged():
    clip = installed(LIBRIVOX_CLIP, "pocketsphinx-testdata")
    native, rate = sf.read(clip, dtype="float32")
    audio = load_audio(clip)
    assert rate == SAMPLE_RATE
    assert audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_array_equal(audio, native)
    assert audio_duration(clip) == pytest.approx(2.99, abs=0.01)


def test_allison_prompt_at_8khz_is_upsampled():
    prompt = installed(ALLISON_PROMPT, "asterisk-core-sounds-en-wav")
    info = sf.info(prompt)
    audio = load_audio(prompt)
    assert info.samplerate == 8000
    assert audio.shape == (2 * info.frames,)
    assert audio_duration(prompt) == pytest.approx(audio.shape[0] / SAMPLE_RATE)
    assert np.sqrt(np.mean(audio**2)) > 0.01  # speech, not silence


def test_alsa_file_at_48khz_is_downsampled():
    path = installed(ALSA_FRONT_LEFT, "alsa-utils")
    info = sf.info(path)
    audio = load_audio(path)
    assert info.samplerate == 48000
    assert audio.shape[0] == pytest.approx(info.frames / 3, abs=1)
    assert audio_duration(path) == pytest.approx(1.48, abs=0.01)


@needs_ffmpeg
@pytest.mark.parametrize("suffix", [".mp3", ".ogg", ".m4a"])
def test_compressed_formats_load_at_16khz(tmp_path, suffix):
    clip = installed(LIBRIVOX_CLIP, "pocketsphinx-testdata")
    reference = load_audio(clip)
    encoded = ffmpeg_convert(clip, tmp_path / f"clip{suffix}")
    audio = load_audio(encoded)  # .m4a is beyond libsndfile: it goes through ffmpeg
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.shape[0] / SAMPLE_RATE == pytest.approx(2.99, abs=0.05)
    assert audio_duration(encoded) == pytest.approx(2.99, abs=0.05)
    # a lossy copy of the same speech: about the same loudness
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(np.sqrt(np.mean(reference**2)), rel=0.2)


def test_stereo_44khz_is_mixed_down_and_resampled(tmp_path):
    left, right = tone(440, 1.0, 44100), tone(440, 1.0, 44100)
    sf.write(tmp_path / "stereo.flac", np.stack([left, 0.5 * right], axis=1), 44100)
    audio = load_audio(tmp_path / "stereo.flac")
    assert audio.shape[0] == pytest.approx(SAMPLE_RATE, abs=1)
    assert dominant_frequency(audio, SAMPLE_RATE) == pytest.approx(440, abs=2)
    assert np.abs(audio).max() == pytest.approx(0.375, abs=0.01)  # the mean of 0.5 and 0.25 amplitude


def test_sample_rate_can_be_chosen(tmp_path):
    sf.write(tmp_path / "tone.wav", tone(1000, 0.5, SAMPLE_RATE), SAMPLE_RATE)
    audio = load_audio(tmp_path / "tone.wav", sample_rate=8000)
    assert audio.shape == (4000,)
    assert dominant_frequency(audio, 8000) == pytest.approx(1000, abs=4)


@pytest.mark.parametrize("native_rate,n_samples", [(8000, 999), (22050, 12345), (44100, 44101), (48000, 7)])
def test_resampling_gives_librosa_default_samples(native_rate, n_samples):
    """soxr is called directly now; the samples and length must be librosa.resample's (soxr_hq) ones."""
    librosa = pytest.importorskip("librosa")
    from whisper_spec.audio import _resample

    x = np.random.default_rng(native_rate).standard_normal(n_samples).astype(np.float32)
    expected = librosa.resample(x, orig_sr=native_rate, target_sr=SAMPLE_RATE)
    got = _resample(x, native_rate, SAMPLE_RATE)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_loading_audio_does_not_import_librosa(tmp_path):
    """librosa's import and first resample were the first-file cost of a fresh process."""
    import sys

    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(4800, dtype=np.float32), 48000)
    code = (
        "import sys; from whisper_spec.audio import load_audio; "
        f"a = load_audio({str(path)!r}); assert a.shape == (1600,), a.shape; print('librosa' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
