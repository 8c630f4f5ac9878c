"""evaluation: Whisper's text normaliser, WER/CER, and the manifests built from installed speech."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation.manifests import (
    ALLISON_DIR,
    ALLISON_TRANSCRIPTS,
    LIBRIVOX_DIR,
    LONGFORM_PASSAGES,
    DatasetUnavailableError,
    ManifestEntry,
    allison_manifest,
    huggingface_manifest,
    librivox_manifest,
    longform_manifest,
    read_manifest,
    tts_longform_manifest,
    tts_manifest,
    write_manifest,
)
from evaluation.metrics import ErrorCounts, cer, char_errors, wer, word_errors
from evaluation.text_normalizer import normalize_english
from whisper_spec.audio import SAMPLE_RATE, audio_duration


def installed(path: Path, debian_package: str) -> None:
    if not path.exists():
        pytest.skip(f"{path} is missing: install the Debian package {debian_package}")


@pytest.fixture(scope="module")
def allison():
    installed(ALLISON_DIR, "asterisk-core-sounds-en-wav")
    installed(ALLISON_TRANSCRIPTS, "asterisk-core-sounds-en")
    return allison_manifest()


# ---- normaliser: outputs checked against openai-whisper's own EnglishTextNormalizer ------------


@pytest.mark.parametrize(
    "text, normal",
    [
        ("Mr. Smith paid $20 for the colour TV.", "mister smith paid $20 for the color tv"),
        ("twenty five", "25"),
        ("He paid twenty five dollars and fifty cents", "he paid $25.50"),
        ("It's the 3rd of May, nineteen ninety-nine.", "it is the 3rd of may 1999"),
        (
            "I'm gonna, um, analyse the behaviour of 1,000 people at 5%.",
            "i am going to analyze the behavior of 1000 people at 5%",
        ),
        ("the 1960s and the twenty-first century", "the 1960s and the 21st century"),
        ("one oh one", "101"),
        ("minus forty degrees", "-40 degrees"),
        ("won't can't shouldn't y'all", "will not can not should not you all"),
        ("[music] Hello (laughs) there, hmm", "hello there"),
        ("Ça va? Naïve café, Œuvre!", "ca va naive cafe oeuvre"),
    ],
)
def test_normaliser_gives_whispers_form(text, normal):
    assert normalize_english(text) == normal


def test_normaliser_strips_edges():
    assert normalize_english("  Uh, OK.  ") == "ok"
    assert normalize_english("um") == ""


# ---- WER and CER ---------------------------------------------------------------------------------


def test_wer_is_corpus_level():
    references = ["the cat sat on the mat", "hello world"]
    hypotheses = ["the cat sat on a mat", "hello"]
    assert wer(references, hypotheses) == 2 / 8
    # total edits over total words (1 / 5), not the mean of the utterance rates (0.5)
    assert wer(["a b c d", "e"], ["a b c d", "x"]) == pytest.approx(0.2)


def test_wer_counts_after_normalisation():
    assert wer(["Mr. Smith paid twenty dollars."], ["mister smith paid $20"]) == 0.0
    # raw words: Mr./mister, Smith/smith and twenty/$20 substituted, dollars. deleted
    assert wer(["Mr. Smith paid twenty dollars."], ["mister smith paid $20"], normalize=False) == 4 / 5
    assert wer(["I analysed the colour."], ["i analyzed the color"]) == 0.0


def test_cer_on_known_strings():
    assert cer(["colour"], ["color"]) == 0.0  # one spelling after normalisation
    assert cer(["kitten"], ["sitting"], normalize=False) == 0.5  # 2 substitutions + 1 insertion over 6
    assert cer(["abc", "de"], ["abd", "de"]) == pytest.approx(1 / 5)


def test_per_utterance_counts():
    counts = word_errors("the cat sat on the mat", "the cat sat on mat")
    assert counts == ErrorCounts(substitutions=0, deletions=1, insertions=0, hits=5)
    assert counts.reference_length == 6 and counts.errors == 1 and counts.rate == pytest.approx(1 / 6)
    assert word_errors("The cat sat.", "the big cat sat") == ErrorCounts(
        substitutions=0, deletions=0, insertions=1, hits=3
    )
    assert char_errors("kitten", "sitting") == ErrorCounts(substitutions=2, deletions=0, insertions=1, hits=4)
    assert word_errors("a b", "a c") + word_errors("c", "") == ErrorCounts(1, 1, 0, 1)


def test_empty_references():
    assert word_errors("um", "").rate == 0.0  # both empty once normalised
    assert word_errors("", "hello there").rate == float("inf")


def test_metric_arguments_are_checked():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="not one string"):
        wer("the cat", "the dog")
    with pytest.raises(ValueError, match="empty"):
        cer([], [])


# ---- manifests -----------------------------------------------------------------------------------


def test_librivox_manifest():
    installed(LIBRIVOX_DIR, "pocketsphinx-testdata")
    entries = librivox_manifest()
    assert len(entries) == 5
    assert all(entry.audio.is_file() and entry.language == "en" and entry.source == "librivox" for entry in entries)
    by_id = {entry.id: entry.text for entry in entries}
    assert by_id["sense_and_sensibility_01_austen_64kb-0880"] == "he was not an ill disposed young man"
    assert all("<s>" not in text and "(" not in text and len(text.split()) >= 5 for text in by_id.values())


def test_allison_manifest(allison):
    ids = {entry.id: entry for entry in allison}
    assert 500 <= len(allison) <= 568
    assert all(entry.audio.is_file() and entry.text and entry.source == "allison" for entry in allison)
    assert not any("[" in entry.text or "]" in entry.text for entry in allison)
    assert "beep" not in ids and "letters/dollar" not in ids  # "[this is a simple beep tone]", "dollar [$]"
    assert ids["digits/1"].audio == ALLISON_DIR / "digits" / "1.wav"  # names with a subfolder
    assert ids["auth-thankyou"].text == "Thank you."
    assert allison_manifest(limit=7) == allison[:7]


def test_builders_name_the_missing_package(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="pocketsphinx-testdata"):
        librivox_manifest(tmp_path)
    with pytest.raises(DatasetUnavailableError, match="asterisk-core-sounds-en-wav"):
        allison_manifest(sounds_dir=tmp_path / "none")
    with pytest.raises(DatasetUnavailableError, match="asterisk-core-sounds-en "):
        allison_manifest(sounds_dir=tmp_path, transcripts=tmp_path / "none.txt.gz")


def test_manifest_round_trip(tmp_path, allison):
    clip = tmp_path / "clips" / "one.wav"
    clip.parent.mkdir()
    sf.write(clip, np.zeros(1600, np.float32), SAMPLE_RATE)
    entries = [ManifestEntry(clip, "a clip beside the manifest", id="one"), *allison[:20]]
    path = write_manifest(entries, tmp_path / "manifest.jsonl")
    assert read_manifest(path) == entries  # sources included
    first, second = (json.loads(line) for line in path.read_text().splitlines()[:2])
    assert first == {"audio": "clips/one.wav", "text": "a clip beside the manifest", "id": "one"}
    assert second["source"] == "allison"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "manifest.jsonl"]  # no temporary file left


def test_manifest_entry_accepts_str_paths():
    assert ManifestEntry("a.wav", "text") == ManifestEntry(Path("a.wav"), "text")


def test_read_manifest_reports_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"audio": "a.wav", "text": "fine"}\n\n{"audio": "b.wav"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: .*'text'"):
        read_manifest(path)
    path.write_text('{"audio_filepath": "a.wav", "text": "x"}\n')
    with pytest.raises(ValueError, match="unknown field"):
        read_manifest(path)
    path.write_text('{"audio": "a.wav", "text": "x", "source": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'source'"):
        read_manifest(path)


def test_longform_manifest_joins_clips(tmp_path, allison):
    clips = allison[:120]
    joined = longform_manifest(clips, tmp_path / "long", target_seconds=120, gap_seconds=0.5)
    first = joined[0]
    assert first.id == "longform-000" and first.language == "en" and first.source == "longform:allison"
    assert sf.info(first.audio).samplerate == SAMPLE_RATE
    assert audio_duration(first.audio) == pytest.approx(120, abs=15)
    # the reference is the joined references of the first k clips, and the audio their length plus gaps
    count = next(k for k in range(1, len(clips) + 1) if " ".join(c.text for c in clips[:k]) == first.text)
    expected_seconds = sum(audio_duration(c.audio) for c in clips[:count]) + 0.5 * (count - 1)
    assert audio_duration(first.audio) == pytest.approx(expected_seconds, abs=0.01)
    following = joined[1].text
    assert following.startswith(clips[count].text)


def test_longform_keeps_a_short_remainder_when_it_is_all_there_is(tmp_path):
    installed(LIBRIVOX_DIR, "pocketsphinx-testdata")
    clips = librivox_manifest()
    (joined,) = longform_manifest(clips, tmp_path, target_seconds=120)
    assert joined.text == " ".join(clip.text for clip in clips) and joined.source == "longform:librivox"
    assert audio_duration(joined.audio) == pytest.approx(26.7, abs=0.1)  # 24.7 s of speech + 4 gaps


def test_tts_manifest(tmp_path):
    pytest.importorskip("hibari")
    text = "He was not an ill disposed young man."
    (entry,) = tts_manifest([text], tmp_path)
    assert entry.text == text and entry.id == "tts-000" and entry.language == "en"
    info = sf.info(entry.audio)
    assert info.samplerate == SAMPLE_RATE and info.channels == 1
    seconds_per_word = info.duration / len(text.split())
    assert 0.15 < seconds_per_word < 0.8


def test_longform_passages_are_spoken_sentence_by_sentence_into_one_recording(tmp_path):
    pytest.importorskip("hibari")
    sentences = ("The family of Dashwood had long been settled in Sussex.", "His attachment to them all increased.")
    (entry,) = tts_longform_manifest(tmp_path, {"short": sentences}, gap_seconds=0.3)
    assert (entry.id, entry.source, entry.language) == ("longform-short", "longform:tts", "en")
    assert entry.text == " ".join(sentences)
    spoken = sorted((tmp_path / "short" / "sentences").glob("*.wav"))
    assert len(spoken) == 2  # one synthesised file per sentence, joined with one gap
    assert audio_duration(entry.audio) == pytest.approx(sum(audio_duration(s) for s in spoken) + 0.3, abs=0.01)
    # the built-in passages are long-form (well over one 30-s window) at any plausible speaking rate
    for passage in LONGFORM_PASSAGES.values():
        assert sum(len(sentence.split()) for sentence in passage) * 0.25 > 30


def test_huggingface_manifest_without_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(DatasetUnavailableError, match="PyPI package datasets"):
        huggingface_manifest(out_dir=tmp_path, limit=3)


def test_huggingface_manifest_saves_rows(tmp_path, monkeypatch):
    """With a stand-in `datasets` module: rows of undecoded flac become files and entries."""
    flac = tmp_path / "source.flac"
    sf.write(flac, np.zeros(8000, np.float32), SAMPLE_RATE)
    rows = [
        {"id": f"utt-{i}", "text": f"utterance {i}", "audio": {"bytes": flac.read_bytes(), "path": "x.flac"}}
        for i in range(5)
    ]
    calls = []

    class Rows(list):
        def cast_column(self, column, feature):
            calls.append((column, feature))
            return self

    def load_dataset(dataset, config, split, streaming):
        calls.append((dataset, config, split, streaming))
        return Rows(rows)

    fake = types.SimpleNamespace(load_dataset=load_dataset, Audio=lambda decode: f"Audio(decode={decode})")
    monkeypatch.setitem(sys.modules, "datasets", fake)
    entries = huggingface_manifest(out_dir=tmp_path / "hub", limit=3)
    assert calls == [("librispeech_asr", "clean", "test", True), ("audio", "Audio(decode=False)")]
    assert [(e.id, e.text) for e in entries] == [
        ("utt-0", "utterance 0"),
        ("utt-1", "utterance 1"),
        ("utt-2", "utterance 2"),
    ]
    assert all(audio_duration(e.audio) == 0.5 for e in entries)


def test_huggingface_manifest_reports_an_unreachable_hub(tmp_path, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset, Audio=None))
    with pytest.raises(DatasetUnavailableError, match="could not load librispeech_asr/clean/test"):
        huggingface_manifest(out_dir=tmp_path)
