"""``whisper-spec transcribe`` over a folder of good and bad files, and a run killed halfway then resumed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import srt
import torch
import webvtt
from conftest import ALLISON, LIBRIVOX

from whisper_spec.cli import build_parser, main
from whisper_spec.output_formats import FORMATS

GOOD = [LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav", ALLISON / "vm-review.wav"]
KILL_CLIPS = sorted(LIBRIVOX.glob("*.wav"))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Good speech beside every kind of bad input."""
    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("inbox")
    for clip in GOOD:
        shutil.copy(clip, folder / clip.name)
    (folder / "empty.wav").write_bytes(b"")
    whole = GOOD[0].read_bytes()
    (folder / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.wav").write_text("these are meeting notes, not audio\n")
    (folder / "garbage.ogg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    sf.write(folder / "blip.wav", 0.1 * np.sin(np.arange(800) / 5.0), 16000)  # 50 ms
    sf.write(folder / "silence.wav", np.zeros(30 * 16000), 16000)
    return folder


def test_help_gives_every_option_a_sentence():
    parser = build_parser()
    verb = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "transcribe")[1]
    for action in verb._actions:
        if action.dest != "help":
            assert action.help and len(action.help.split()) >= 3, action.dest


def test_a_mixed_folder_finishes_reports_each_bad_file_and_exits_non_zero(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    missing = mixed_folder / "never-recorded.wav"
    status = main(["transcribe", str(mixed_folder), str(missing), "-o", str(out), "--target", "base",
                   "--draft", "tiny.en", "--language", "en", "--batch-size", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 1
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    reasons = {Path(line.split(": ")[1]).name: line for line in errors}
    assert set(reasons) == {"never-recorded.wav", "empty.wav", "truncated.wav", "notes.wav", "garbage.ogg"}, errors
    assert "no such file" in reasons["never-recorded.wav"] and "empty" in reasons["empty.wav"]
    assert "truncated" in reasons["truncated.wav"]

    for name in ["sense_and_sensibility_01_austen_64kb-0870", "vm-review", "blip", "silence"]:
        assert all((out / f"{name}.{f}").is_file() for f in FORMATS), name
    cues = list(srt.parse((out / "vm-review.srt").read_text()))
    assert len(cues) >= 2 and "Press" in cues[0].content and cues[-1].end.total_seconds() > 5
    captions = webvtt.read(str(out / "sense_and_sensibility_01_austen_64kb-0870.vtt"))
    assert "Dashwood" in " ".join(c.text for c in captions)
    assert (out / "silence.txt").read_text() == ""
    assert "files failed" in captured.out and not list(out.glob(".*.tmp"))


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, "-m", "whisper_spec", "transcribe", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_killed_halfway_then_rerun_completes_without_redoing_finished_files(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for clip in KILL_CLIPS:
        shutil.copy(clip, inbox / clip.name)
    out = tmp_path / "out"
    args = [str(inbox), "-o", str(out), "--target", "tiny.en", "--no-speculative", "--no-progress"]
    first = _run(args)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.tsv")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = {p.stem: p.stat().st_mtime_ns for p in out.glob("*.tsv")}
    assert 1 <= len(finished) < len(KILL_CLIPS), "the run was not stopped halfway"
    for path in out.iterdir():  # whatever sits under a final name is complete
        if not path.name.startswith("."):
            assert path.stat().st_size > 0 or path.suffix == ".txt", path

    second = _run(args)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr
    summary = dict(re.findall(r"^(files [a-z ()]+?)\s{2,}(\d+)$", stdout, re.MULTILINE))
    assert summary["files skipped (already done)"] == str(len(finished))
    assert summary["files transcribed"] == str(len(KILL_CLIPS) - len(finished))
    for clip in KILL_CLIPS:
        assert all((out / f"{clip.stem}.{f}").is_file() for f in FORMATS)
    assert {stem: (out / f"{stem}.tsv").stat().st_mtime_ns for stem in finished} == finished
