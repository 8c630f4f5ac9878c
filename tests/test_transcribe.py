"""The public entry point on the bundled clip: right words, statistics, baseline parity, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import whisper_spec
from whisper_spec import transcribe
from whisper_spec.audio import AudioLoadError

EXAMPLE = Path(whisper_spec.__file__).parent / "examples" / "sense_and_sensibility_0870.wav"


@pytest.fixture(scope="module", autouse=True)
def threads():
    torch.set_num_threads(2)


def test_the_default_pipeline_prints_the_right_words_and_the_statistics():
    # k fixed: the shared pipeline's adaptive length may have learned that the draft does not pay on this CPU
    result = transcribe(EXAMPLE, language="en", adaptive_draft_length=False)
    words = result.text.lower()
    for word in ("dashwood", "leisure", "prudently", "power"):
        assert word in words
    stats = result.stats
    assert result.language == "en" and result.target == "base" and result.draft == "distilled"
    assert stats.tokens == len(result.tokens) + 1  # the end-of-text token is generated, not shown
    assert stats.drafted > 0 and 0 < stats.accepted <= stats.drafted
    assert stats.target_calls < stats.tokens  # speculation saved target forward passes
    assert stats.draft_calls > 0 and stats.encoder_seconds > 0 and stats.verify_seconds > 0
    assert stats.wall_seconds >= stats.encoder_seconds + stats.verify_seconds
    assert 6.5 < result.audio_seconds < 7.5
    assert "target calls" in stats.summary()
    # per-token provenance: the accepted draft tokens that made it into the transcript
    assert len(result.from_draft) == len(result.tokens)
    assert 0 < sum(result.from_draft) <= stats.accepted


def test_the_baseline_gives_the_same_tokens_with_one_target_call_per_token():
    speculative = transcribe(EXAMPLE, language="en")
    baseline = transcribe(EXAMPLE, draft=None, language="en")
    assert baseline.tokens == speculative.tokens
    assert baseline.stats.drafted == 0 and baseline.stats.target_calls == baseline.stats.tokens


def test_language_is_detected_for_a_multilingual_target():
    assert transcribe(EXAMPLE, draft=None).language == "en"


@pytest.mark.parametrize("name,content,reason", [
    ("missing.wav", None, "no such file"),
    ("empty.wav", b"", "empty"),
    ("notes.wav", b"this is not audio\n" * 20, ""),
])
def test_bad_files_raise_an_error_that_names_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioLoadError) as error:
        transcribe(path)
    message = str(error.value)
    assert str(path) in message and reason in message.lower()


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        transcribe(EXAMPLE, preset="huge")


def test_the_package_exports_what_users_touch():
    from whisper_spec import Segment, SegmentStream, WhisperModel, generate
    from whisper_spec.generation import generate as generate_function
    from whisper_spec.model import WhisperModel as model_class

    assert generate is generate_function and WhisperModel is model_class
    assert Segment.__name__ == "Segment" and SegmentStream.__name__ == "SegmentStream"


@pytest.fixture(scope="module")
def model():
    from whisper_spec import WhisperModel

    return WhisperModel()


def test_a_model_is_loaded_once_and_transcribes_many_inputs_learning_as_it_goes(model):
    assert (model.target, model.draft) == ("base", "distilled")
    assert not model.engine.draft_lengths._policies  # nothing learned yet
    first = model.transcribe(EXAMPLE, language="en")
    learned = dict(model.engine.draft_lengths._policies)
    assert learned  # what the draft costs here now lives in the object ...
    again = model.transcribe(EXAMPLE, language="en")
    assert again.tokens == first.tokens
    assert model.engine.draft_lengths._policies == learned  # ... and the next call reuses it
    baseline = model.with_draft(None)
    assert baseline.checkpoint is model.checkpoint  # the same weights ...
    assert baseline.engine.draft_lengths is not model.engine.draft_lengths  # ... learning apart
    assert baseline.transcribe(EXAMPLE, language="en").tokens == first.tokens


def test_a_model_streams_segments_and_transcribes_files_as_it_transcribes_one(model):
    from whisper_spec.audio import load_audio

    samples = load_audio(EXAMPLE)
    stream = model.transcribe(samples, language="en", stream=True)
    segments = list(stream)
    assert tuple(segments) == stream.transcription.segments and segments
    alone = model.transcribe(samples, language="en", timestamps=True)
    steps = list(model.transcribe_files([("a", samples), ("b", samples[: len(samples) // 2])],
                                        whisper_spec.TranscribeOptions(language="en")))
    finished = {step.key: step.transcription for step in steps if step.transcription is not None}
    assert set(finished) == {"a", "b"}
    assert finished["a"].tokens == alone.tokens and finished["a"].segments == alone.segments
    assert finished["b"].audio_seconds < finished["a"].audio_seconds


def test_files_that_arrive_mid_decode_join_at_the_next_round_and_match_their_solo_transcripts(model):
    """Continuous batching through a ``FileQueue``: a short file put while a long-form file's first window
    is mid-decode joins at the next round and finishes before that window does; a file with its own
    initial prompt and one cancelled mid-decode share the batch; every transcript equals its solo one."""
    import numpy as np

    from whisper_spec import FileQueue, FileRequest, TranscribeOptions
    from whisper_spec.audio import SAMPLE_RATE, load_audio

    librivox = Path("/usr/share/pocketsphinx/test/data/librivox")
    allison = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
    clips = [load_audio(p) for p in sorted(librivox.glob("*.wav"))]
    clips += [load_audio(allison / f"{name}.wav") for name in ("vm-review", "conf-onlyperson", "vm-intro")]
    gap = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    long = np.concatenate([piece for clip in clips[:7] for piece in (clip, gap)])
    assert len(long) / SAMPLE_RATE > 35
    options = TranscribeOptions(language="en", timestamps=True)
    alone = {"long": model.transcribe(long, options), "late": model.transcribe(clips[7], options),
             "prompted": model.transcribe(clips[1], options, initial_prompt="Mrs. Dashwood, Elinor and Marianne.")}

    queue, rounds, cancel = FileQueue(), [0], [False]

    def tick() -> bool:  # asked once per round: the late file arrives at round 3, the doomed one goes at 5
        rounds[0] += 1
        if rounds[0] == 3:
            queue.put(FileRequest("late", clips[7]))
            queue.close()
        cancel[0] = cancel[0] or rounds[0] >= 5
        return False

    queue.put(FileRequest("long", long, cancelled=tick))
    queue.put(FileRequest("prompted", clips[1], initial_prompt="Mrs. Dashwood, Elinor and Marianne."))
    queue.put(FileRequest("doomed", clips[2], cancelled=lambda: cancel[0]))
    order, finished = [], {}
    for step in model.transcribe_files(queue, options, batch_size=4):
        order.append(step.key)
        if step.transcription is not None:
            finished[step.key] = step.transcription
    assert set(finished) == {"long", "prompted", "late"}  # the cancelled file gives nothing more
    for key, transcription in finished.items():
        assert transcription.tokens == alone[key].tokens and transcription.segments == alone[key].segments, key
    assert order.index("late") < order.index("long")  # it did not wait for the long file's window to end
