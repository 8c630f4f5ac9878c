"""Transcript files: txt, json, srt, vtt and tsv, each written atomically.

A writer renders a ``Transcription`` to text; ``write_outputs`` puts each format beside the others
under its final name only once it is complete (temporary sibling, fsync, rename), so a crash or a
kill never leaves half a transcript where a rerun would take it for a finished one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from whisper_spec.atomic import atomic_write_text
from whisper_spec.transcription import Transcription


def _clock(seconds: float, decimal: str, always_hours: bool) -> str:
    """Seconds -> "HH:MM:SS,mmm" (srt) or "[HH:]MM:SS.mmm" (vtt)."""
    total = max(0, round(seconds * 1000))
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cue_text(text: str) -> str:
    # a blank line ends a cue, and "-->" inside text confuses parsers
    return " ".join(text.split()).replace("-->", "->")


def to_txt(result: Transcription) -> str:
    """One segment per line."""
    return "".join(segment.text.strip() + "\n" for segment in result.segments)


def to_srt(result: Transcription) -> str:
    cues = [f"{index}\n{_clock(s.start, ',', True)} --> {_clock(s.end, ',', True)}\n{_cue_text(s.text)}\n"
            for index, s in enumerate(result.segments, start=1)]
    return "\n".join(cues)


def to_vtt(result: Transcription) -> str:
    cues = [f"{_clock(s.start, '.', True)} --> {_clock(s.end, '.', True)}\n{_cue_text(s.text)}\n"
            for s in result.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_tsv(result: Transcription) -> str:
    """start and end in integer milliseconds, as openai-whisper writes them."""
    rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{_cue_text(s.text)}\n" for s in result.segments]
    return "start\tend\ttext\n" + "".join(rows)


def to_json(result: Transcription) -> str:
    """Text, segments (with words), language, timings and the speculative decoding statistics."""
    stats = result.stats
    document = {
        "text": result.text,
        "language": result.language,
        "audio_seconds": result.audio_seconds,
        "target": result.target,
        "draft": result.draft,
        "segments": [asdict(s) for s in result.segments],
        "timings": {
            "wall_seconds": stats.wall_seconds,
            "encoder_seconds": stats.encoder_seconds,
            "draft_seconds": stats.draft_seconds,
            "verify_seconds": stats.verify_seconds,
            "real_time_factor": result.real_time_factor,
        },
        "speculation": {
            "tokens": stats.tokens,
            "rounds": stats.rounds,
            "drafted": stats.drafted,
            "accepted": stats.accepted,
            "acceptance_rate": stats.acceptance_rate,
            "mean_accepted_length": stats.mean_accepted_length,
            "target_calls": stats.target_calls,
            "draft_calls": stats.draft_calls,
            "accepted_lengths": {str(n): count for n, count in stats.accepted_lengths},
        },
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


WRITERS: dict[str, Callable[[Transcription], str]] = {
    "txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}
FORMATS = tuple(WRITERS)


def output_paths(stem: Path, formats: Sequence[str]) -> list[Path]:
    """``stem`` with each format's extension (``out/talk`` -> ``out/talk.srt``)."""
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ValueError(f"unknown output format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    return [stem.with_name(f"{stem.name}.{f}") for f in formats]


def write_outputs(result: Transcription, stem: Path, formats: Sequence[str]) -> list[Path]:
    """Write ``result`` in every format to ``stem.<format>``, each file atomically; returns the paths."""
    paths = output_paths(stem, formats)
    for path, name in zip(paths, formats):
        atomic_write_text(path, WRITERS[name](result))
    return paths
