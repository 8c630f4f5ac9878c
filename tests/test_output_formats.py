"""Transcript writers: standard parsers read the srt and vtt files back, and writes are atomic."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import srt
import webvtt

from whisper_spec import atomic
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.output_formats import FORMATS, write_outputs
from whisper_spec.transcription import Transcription
from whisper_spec.whisper.longform import Segment, Word

SEGMENTS = (
    Segment(0, 0.0, 2.5, " Press 1 to accept this recording.", (50364, 6776, 50489), -0.2, 0.01, 1.2,
            (Word(" Press", 0.0, 0.4, 0.9), Word(" 1", 0.4, 0.7, 0.8))),
    Segment(1, 2.5, 61.04, " A minute --> later,\n on two lines.", (50489, 32, 53416), -0.3, 0.02, 1.1),
    Segment(2, 3599.5, 3725.25, " Past the hour.", (50364, 7, 50400), -0.1, 0.0, 1.0),
)
RESULT = Transcription(text="Press 1 to accept this recording. A minute --> later, on two lines. Past the hour.",
                       segments=SEGMENTS, tokens=(1, 2, 3), language="en", audio_seconds=3726.0,
                       stats=SpeculationStats(tokens=9, rounds=4, drafted=8, accepted=5, target_calls=4,
                                              draft_calls=6, wall_seconds=2.0, accepted_lengths=((1, 2), (3, 1))),
                       target="base", draft="tiny.en")


def test_every_format_is_written_and_parses(tmp_path: Path):
    paths = write_outputs(RESULT, tmp_path / "talk", FORMATS)
    assert [p.name for p in paths] == [f"talk.{f}" for f in FORMATS]

    cues = list(srt.parse((tmp_path / "talk.srt").read_text()))
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in cues] == [(0.0, 2.5), (2.5, 61.04),
                                                                              (3599.5, 3725.25)]
    assert cues[1].content == "A minute -> later, on two lines."

    captions = webvtt.read(str(tmp_path / "talk.vtt"))
    assert [(c.start, c.end) for c in captions] == [("00:00:00.000", "00:00:02.500"), ("00:00:02.500", "00:01:01.040"),
                                                   ("00:59:59.500", "01:02:05.250")]
    assert captions[2].text == "Past the hour."

    document = json.loads((tmp_path / "talk.json").read_text())
    assert document["text"] == RESULT.text and document["language"] == "en"
    assert document["segments"][0]["words"][1] == {"word": " 1", "start": 0.4, "end": 0.7, "probability": 0.8}
    assert document["speculation"]["acceptance_rate"] == pytest.approx(5 / 8)
    assert document["timings"]["real_time_factor"] == pytest.approx(2.0 / 3726.0)

    assert (tmp_path / "talk.tsv").read_text().splitlines()[1:] == [
        "0\t2500\tPress 1 to accept this recording.", "2500\t61040\tA minute -> later, on two lines.",
        "3599500\t3725250\tPast the hour."]
    assert (tmp_path / "talk.txt").read_text().splitlines()[0] == "Press 1 to accept this recording."


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path: Path, monkeypatch):
    target = tmp_path / "talk.txt"
    target.write_text("old\n")

    def failing_fsync(_fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(RESULT, tmp_path / "talk", ["txt"])
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["talk.txt"]  # the temporary file was removed


def test_unknown_format_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown output format"):
        write_outputs(RESULT, tmp_path / "talk", ["txt", "docx"])


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_transcripts_get_the_permissions_an_ordinary_new_file_gets(tmp_path: Path, umask):
    previous = os.umask(umask)
    try:
        paths = write_outputs(RESULT, tmp_path / "talk", ["txt", "srt"])
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [0o666 & ~umask] * 2


def test_rewriting_a_transcript_keeps_the_permissions_it_was_given(tmp_path: Path):
    target = tmp_path / "talk.txt"
    target.write_text("old\n")
    target.chmod(0o640)
    write_outputs(RESULT, tmp_path / "talk", ["txt"])
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() != "old\n"
