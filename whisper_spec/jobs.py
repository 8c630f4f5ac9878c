"""Which audio files a transcription job covers, what they are called in the output folder, and the
summary printed at its end: one home for the local CLI and the Ray runner, so both name, skip and
report files the same way.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from whisper_spec.core.stats import SpeculationStats

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm", ".mp4", ".mkv")


@dataclass(frozen=True)
class Job:
    source: Path  # the audio file
    stem: Path  # outputs go to stem.<format>


@dataclass(frozen=True)
class Failure:
    source: str
    reason: str


def find_jobs(inputs: list[str], output_dir: Path) -> tuple[list[Job], list[Failure]]:
    """Expand files, folders and globs into jobs with distinct output stems; report inputs that match nothing."""
    jobs: list[Job] = []
    failures: list[Failure] = []
    claimed: dict[Path, Path] = {}

    def add(source: Path, stem: Path) -> None:
        if stem in claimed:
            if claimed[stem].resolve() != source.resolve():
                failures.append(Failure(str(source), f"its output name {stem} is also {claimed[stem]}'s; "
                                                     f"transcribe them into different --output-dir"))
            return
        claimed[stem] = source
        jobs.append(Job(source, stem))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                failures.append(Failure(item, f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder"))
            for source in found:
                add(source, output_dir / source.relative_to(path).with_suffix(""))
        elif path.exists() or not glob.has_magic(item):
            add(path, output_dir / path.stem)  # a missing file fails when it is read, with the reason
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                failures.append(Failure(item, "no files match this pattern"))
            for source in matches:
                add(source, output_dir / source.stem)
    return jobs, failures


def print_summary(files: int, audio: float, stats: SpeculationStats, skipped: int, failures: list[Failure],
                  wall: float, output_dir: Path) -> None:
    """The table a job ends with: ``files`` transcribed, their ``audio`` seconds and summed ``stats``."""
    rows = [
        ("files transcribed", f"{files}"),
        ("files skipped (already done)", f"{skipped}"),
        ("files failed", f"{len(failures)}"),
        ("audio", f"{audio / 3600:.3f} h ({audio:.1f} s)"),
        ("wall time", f"{wall:.1f} s"),
        ("real-time factor", f"{wall / audio:.3f}" if audio else "-"),
        ("draft acceptance",
         f"{stats.acceptance_rate:.2f} ({stats.accepted}/{stats.drafted})" if stats.drafted else "-"),
        ("tokens per target call", f"{stats.tokens_per_target_call:.2f}" if stats.target_calls else "-"),
        ("outputs in", str(output_dir)),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    for failure in failures:
        print(f"failed: {failure.source}: {failure.reason}")
