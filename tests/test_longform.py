"""Timestamps and long-form transcription: the grammar, the window algorithm, and losslessness on real speech.

The real-speech reference is the same algorithm with the target alone (speculation off); the timestamp
decoding of one window is also checked against transformers' own ``generate(return_timestamps=True)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ALLISON, LIBRIVOX

from evaluation.manifests import allison_manifest, longform_manifest
from evaluation.metrics import wer
from whisper_spec.audio import SAMPLE_RATE, load_audio
from whisper_spec.draft_specs import resolve_draft
from whisper_spec.model import WhisperModel, transcribe
from whisper_spec.transcription import Transcription
from whisper_spec.whisper.checkpoints import load_transformers_whisper
from whisper_spec.whisper.engine import WindowOptions
from whisper_spec.whisper.logit_rules import SuppressionRules
from whisper_spec.whisper.longform import LongformFile, LongformOptions, compression_ratio
from whisper_spec.whisper.timestamps import TimestampRules
from whisper_spec.whisper.tokens import WhisperTokens
from whisper_spec.whisper.word_timestamps import dtw

# a toy vocabulary: 0..9 text, 10 end-of-text, 11 no-timestamps, 12.. timestamps (12 = <|0.00|>)
EOT, NO_TS, TS0, VOCAB = 10, 11, 12, 40


def toy_rules(prompt_length: int = 2, max_initial: int | None = 5) -> TimestampRules:
    return TimestampRules(SuppressionRules((prompt_length,) * 4, (3,), (EOT,)), TS0, NO_TS, EOT, max_initial)


def allowed(rules: TimestampRules, generated: list[int], logits: torch.Tensor | None = None) -> set[int]:
    logits = torch.zeros(1, 1, VOCAB) if logits is None else logits
    out = rules(torch.tensor([0]), [[90, 91] + generated], [[]], logits)
    return set(torch.nonzero(out[0, 0] > -torch.inf).flatten().tolist())


def test_timestamp_grammar_on_hand_written_prefixes():
    rules = toy_rules()
    assert allowed(rules, []) == set(range(TS0, TS0 + 6))  # first: a timestamp of at most 5 steps
    text = {0, 1, 2, 4, 5, 6, 7, 8, 9, EOT}  # 3 is suppressed
    assert allowed(rules, [TS0 + 2]) == text  # an opening timestamp: text follows
    likely_end = torch.zeros(1, 1, VOCAB)
    likely_end[0, 0, EOT] = 10.0  # so that the timestamps' total does not force a timestamp
    assert allowed(rules, [TS0 + 2, 4, TS0 + 5], likely_end) == {EOT} | set(range(TS0 + 5, VOCAB))  # partner or end
    likely_word = torch.zeros(1, 1, VOCAB)
    likely_word[0, 0, 0] = 10.0
    assert allowed(rules, [TS0 + 2, 4], likely_word) == text | set(range(TS0 + 3, VOCAB))  # never back in time
    assert allowed(rules, [TS0 + 2, 4, TS0 + 7, TS0 + 7]) == text  # a pair closed: text
    # the timestamps together outweigh the best text token: a timestamp is forced
    heavy = torch.zeros(1, 1, VOCAB)
    heavy[0, 0, TS0:] = 1.0
    assert allowed(rules, [TS0 + 2, 4], heavy) == set(range(TS0 + 3, VOCAB))


def test_a_verify_pass_applies_exactly_what_plain_steps_would():
    rules = toy_rules()
    generator = torch.Generator().manual_seed(0)
    for trial in range(30):
        committed = [90, 91] + [TS0 + 1, 5, 6, TS0 + 4, TS0 + 4, 7][: trial % 7]
        draft = torch.randint(0, VOCAB, (6,), generator=generator).tolist()
        logits = torch.randn(1, len(draft) + 1, VOCAB, generator=generator) * 3
        together = rules(torch.tensor([0]), [committed], [draft], logits)
        for j in range(len(draft) + 1):
            alone = rules(torch.tensor([0]), [committed + draft[:j]], [[]], logits[:, j: j + 1])
            assert torch.equal(together[:, j], alone[:, 0]), (trial, j)


def test_each_row_of_a_padded_batch_gets_the_rules_it_would_get_alone():
    rules = toy_rules()
    generator = torch.Generator().manual_seed(1)
    committed = [[90, 91, TS0 + 1, 5], [90, 91], [90, 91, TS0 + 2, 6, TS0 + 3]]
    drafts = [[TS0 + 4, TS0 + 4, 7], [], [TS0 + 3, 8, 9, TS0 + 5, EOT]]
    logits = torch.randn(3, 6, VOCAB, generator=generator) * 3
    together = rules(torch.tensor([0, 1, 2]), committed, drafts, logits)
    for i in range(3):
        alone = rules(torch.tensor([i]), committed[i: i + 1], drafts[i: i + 1], logits[i: i + 1, : len(drafts[i]) + 1])
        assert torch.equal(together[i, : len(drafts[i]) + 1], alone[0]), i


class _StubEngine:
    tokens = WhisperTokens(eot=EOT, sot=EOT + 1, sot_prev=EOT + 2, no_timestamps=EOT + 3, timestamp_begin=TS0,
                           no_speech=None)

    @staticmethod
    def text(tokens):
        return " ".join(str(t) for t in tokens if t < EOT)


def _window(tokens, no_speech=0.01, avg_logprob=-0.2):
    from whisper_spec.core.stats import SpeculationStats
    from whisper_spec.whisper.engine import DecodedWindow
    return DecodedWindow(tuple(tokens), _StubEngine.text(tokens), "en", SpeculationStats(), no_speech, avg_logprob,
                         True)


def test_the_next_window_starts_at_the_last_complete_timestamp():
    speech = np.full(SAMPLE_RATE * 100, 0.1, dtype=np.float32)  # loud enough not to be skipped as silence
    state = LongformFile(_StubEngine(), speech, LongformOptions())
    # two closed segments then an unfinished one: seek to the second segment's end (<|0.00|> + 100 = 2.00 s)
    segments = state.accept(_window([TS0, 1, 2, TS0 + 50, TS0 + 50, 3, TS0 + 100, TS0 + 100, 4, 5]), 0.0)
    assert [(s.start, s.end, s.text) for s in segments] == [(0.0, 1.0, " 1 2"), (1.0, 2.0, " 3")]
    assert state.seek == 200 and state.next_window().previous == (TS0, 1, 2, TS0 + 50, TS0 + 50, 3, TS0 + 100)
    # a lone timestamp at the end: the whole window was transcribed
    segments = state.accept(_window([TS0 + 10, 6, TS0 + 60, TS0 + 60, 7, TS0 + 90]), 0.0)
    assert [(s.start, s.end) for s in segments] == [(2.2, 3.2), (3.2, 3.8)] and state.seek == 3200
    # a confident no-speech window is skipped whole and adds nothing
    assert state.accept(_window([TS0, 8, TS0 + 9], no_speech=0.9, avg_logprob=-2.0), 0.0) == []
    assert state.seek == 6200 and state.skipped == 1
    # a repetition loop is dropped and the prompt starts afresh
    loop = [TS0] + [1, 2, 3, 4] * 20 + [TS0 + 400]
    assert compression_ratio(_StubEngine.text(loop)) > 2.4
    assert state.accept(_window(loop), 0.0) == [] and state.dropped == 1 and state.next_window().previous == ()
    assert state.seek == 9200 and [s.id for s in state.result().segments] == [0, 1, 2, 3]


def test_dtw_follows_the_cheap_diagonal():
    cost = np.ones((3, 6), dtype=np.float32)
    cost[0, 0:2] = cost[1, 2:4] = cost[2, 4:6] = 0
    rows, columns = dtw(cost)
    assert rows.tolist() == [0, 0, 1, 1, 2, 2] and columns.tolist() == [0, 1, 2, 3, 4, 5]


# ---- real speech: the offline base target, drafted by tiny.en (cross-tokenizer) or its own layers ----

@pytest.fixture(scope="module")
def base_engine():
    torch.set_num_threads(2)
    return WhisperModel("base", None).engine


@pytest.fixture(scope="module")
def two_minutes(tmp_path_factory):
    """About 2 minutes of real speech: Allison's prompts joined with half-second pauses."""
    entries = allison_manifest(limit=60)
    joined = longform_manifest(entries, tmp_path_factory.mktemp("longform"), target_seconds=120.0)[0]
    return joined


def test_window_timestamps_match_transformers_generate_and_every_draft(base_engine):
    clip = load_audio(ALLISON / "vm-review.wav")
    target = base_engine.target
    features = target.feature_extractor([clip])
    with torch.inference_mode():
        reference = load_transformers_whisper("base").generate(features, language="en", task="transcribe",
                                                               return_timestamps=True)
    reference = reference if isinstance(reference, torch.Tensor) else reference["sequences"]
    prompt = target.tokens.prompt("en", timestamps=True)
    ids = reference[0].tolist()
    ids = ids[len(prompt):] if ids[: len(prompt)] == prompt else ids  # generate may return the prompt or not
    expected = tuple(t for t in ids if t != target.tokens.eot)
    assert sum(t >= target.tokens.timestamp_begin for t in expected) >= 4  # several timed segments

    options = WindowOptions(language="en", timestamps=True, draft_length=5)
    assert base_engine.decode_windows([clip], options)[0].tokens == expected
    for spec in ("tiny.en", "layers:0,5"):
        drafted = base_engine.with_draft(resolve_draft(spec, target)).decode_windows([clip], options)[0]
        assert drafted.tokens == expected, spec
        assert drafted.stats.drafted > 0


def test_two_minutes_of_speech_give_the_same_segments_with_and_without_speculation(base_engine, two_minutes):
    baseline = transcribe(two_minutes.audio, "base", draft=None, language="en")
    # k fixed so that the draft is used whatever the shared pipeline learned about its cost before
    stream = transcribe(two_minutes.audio, "base", draft="tiny.en", language="en", stream=True,
                        adaptive_draft_length=False)
    streamed = list(stream)
    speculative = stream.transcription
    assert isinstance(speculative, Transcription) and speculative.audio_seconds > 100

    assert speculative.text == baseline.text
    assert speculative.segments == baseline.segments
    assert tuple(streamed) == speculative.segments
    assert speculative.stats.accepted > 0 and baseline.stats.drafted == 0
    # the shipped distilled draft reads windows without their previous-text prompts (it was trained so)
    distilled = transcribe(two_minutes.audio, "base", draft="distilled", language="en", adaptive_draft_length=False)
    assert distilled.segments == baseline.segments and distilled.stats.accepted > 0
    # real timestamps: increasing, inside the audio, several windows' worth
    starts = [s.start for s in baseline.segments]
    assert starts == sorted(starts) and len(baseline.segments) >= 8
    assert all(s.start < s.end <= baseline.audio_seconds + 0.5 for s in baseline.segments)
    assert baseline.segments[-1].end > 90
    assert wer([two_minutes.text], [baseline.text]) < 0.15  # 0.04 measured


def test_silence_is_skipped_without_decoding():
    state = LongformFile(_StubEngine(), np.zeros(SAMPLE_RATE * 45, dtype=np.float32), LongformOptions())
    assert state.next_window() is None and state.done and state.skipped == 2
    quiet = np.full(SAMPLE_RATE * 5, 0.01, dtype=np.float32)  # -40 dB: quiet, but not silence
    assert LongformFile(_StubEngine(), quiet, LongformOptions()).next_window() is not None


def test_a_silent_window_between_speech_gives_no_segment(base_engine):
    clip = load_audio(ALLISON / "vm-review.wav")
    audio = np.concatenate([clip, np.zeros(31 * SAMPLE_RATE, dtype=np.float32), clip])
    result = transcribe(audio, "base", draft=None, language="en")
    texts = [s.text.strip() for s in result.segments]
    assert texts.count("Press 1 to accept this recording.") == 2, texts
    assert not [s for s in result.segments if 9 < s.start and s.end < 38], "text placed inside the silence"


def test_word_timestamps_fall_inside_their_segments(base_engine):
    clip = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"
    result = transcribe(clip, "base", draft=None, language="en", word_timestamps=True)
    words = [w for s in result.segments for w in s.words]
    assert "".join(w.word for w in words).strip() == result.text
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    for segment in result.segments:
        assert all(segment.start - 0.5 <= w.start <= w.end <= segment.end + 0.5 for w in segment.words)
    assert words[-1].end - words[0].start > 0.5 * result.audio_seconds  # spread over the speech, not piled up
