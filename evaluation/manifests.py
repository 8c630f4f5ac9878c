"""Manifests: lists of audio files with reference transcripts, and builders that make them from what is installed.

A manifest is a JSON-lines file, one object per utterance:

    {"audio": "clips/0001.wav", "text": "he was not an ill disposed young man", "id": "0880", "language": "en",
     "source": "librivox"}

`audio` and `text` are required, `id`, `language` and `source` (which corpus the entry came from, as the
builders here name it) optional. A relative `audio` path is relative to the
manifest's own folder, so a manifest written beside its audio can be moved together with it.

No dataset hub is needed: real speech comes from Debian packages (LibriVox clips from
pocketsphinx-testdata, Allison Smith's telephone prompts from asterisk-core-sounds-en[-wav]) and synthetic
speech from the hibari-tts PyPI package; `huggingface_manifest` is for machines that do reach the hub.
Long-form recordings (over one 30-s window) are clips joined with `longform_manifest`, or the passages of
`LONGFORM_PASSAGES` spoken with `tts_longform_manifest`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from whisper_spec.atomic import atomic_write_text
from whisper_spec.audio import SAMPLE_RATE, load_audio

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian pocketsphinx-testdata
ALLISON_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")  # Debian asterisk-core-sounds-en-wav
ALLISON_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")  # asterisk-core-sounds-en

# Long passages for long-form speech no draft was trained on (the shipped draft heard hibari-tts read
# `fortunes` quotations): the opening of Jane Austen's Sense and Sensibility (1811, public domain), the
# book the LibriVox clips are read from, by sentence; each passage is about 70-80 s spoken.
LONGFORM_PASSAGES: dict[str, tuple[str, ...]] = {
    "austen-1": (
        "The family of Dashwood had long been settled in Sussex.",
        "Their estate was large, and their residence was at Norland Park, in the centre of their property, where, "
        "for many generations, they had lived in so respectable a manner as to engage the general good opinion of "
        "their surrounding acquaintance.",
        "The late owner of this estate was a single man, who lived to a very advanced age, and who for many years "
        "of his life had a constant companion and housekeeper in his sister.",
        "But her death, which happened ten years before his own, produced a great alteration in his home.",
        "To supply her loss, he invited and received into his house the family of his nephew, Mr. Henry Dashwood, "
        "the legal inheritor of the Norland estate, and the person to whom he intended to bequeath it.",
        "In the society of his nephew and niece, and their children, the old gentleman's days were comfortably "
        "spent.",
        "His attachment to them all increased.",
        "The constant attention of Mr. and Mrs. Henry Dashwood to his wishes, which proceeded not merely from "
        "interest, but from goodness of heart, gave him every degree of solid comfort which his age could receive.",
        "And the cheerfulness of the children added a relish to his existence.",
    ),
    "austen-2": (
        "By a former marriage, Mr. Henry Dashwood had one son; by his present lady, three daughters.",
        "The son, a steady respectable young man, was amply provided for by the fortune of his mother, which had "
        "been large, and half of which devolved on him on his coming of age.",
        "By his own marriage, likewise, which happened soon afterwards, he added to his wealth.",
        "To him therefore the succession to the Norland estate was not so really important as to his sisters.",
        "Their fortune, independent of what might arise to them from their father's inheriting that property, "
        "could be but small.",
        "Their mother had nothing, and their father had only seven thousand pounds in his own disposal.",
        "The remaining half of his first wife's fortune was also secured to her child, and he had only a life "
        "interest in it.",
        "The old gentleman died; his will was read, and like almost every other will, gave as much disappointment "
        "as pleasure.",
        "He was neither so unjust, nor so ungrateful, as to leave his estate from his nephew; but he left it to "
        "him on such terms as destroyed half the value of the bequest.",
    ),
}

# a LibriVox transcription line: "<s> words of the clip </s> (clip_file_stem)"
_SPHINX_TRANSCRIPT_LINE = re.compile(r"^<s>\s*(?P<text>.*?)\s*</s>\s*\((?P<id>[^()]+)\)$")
# notes in the prompt list that are not spoken words: "[ascending tones]", "dollar [$]"
_BRACKET_NOTE = re.compile(r"\[[^\]]*\]")
# the columns Hugging Face speech datasets keep their transcript in, in order of preference
_HUB_TEXT_COLUMNS = ("text", "sentence", "normalized_text", "transcript", "transcription")


class DatasetUnavailableError(RuntimeError):
    """The data a builder needs is not on this machine (a package to install, or an unreachable hub)."""


@dataclass(frozen=True)
class ManifestEntry:
    """One utterance: an audio file and what is said in it."""

    audio: Path  # the audio file (any format whisper_spec.audio.load_audio reads)
    text: str  # the reference transcript, as written by the source (normalise before scoring)
    id: str | None = None  # a name unique within the manifest
    language: str | None = None  # ISO 639-1 code of the spoken language, e.g. "en"
    # the corpus it came from: "librivox", "allison", "tts", "longform:allison", "longform:tts", "hub:NAME";
    # None for entries of a manifest that does not say
    source: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "audio", Path(self.audio))  # accept str; compare and serialise as a Path


_FIELDS = {"audio", "text", "id", "language", "source"}


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Entries of a JSON-lines manifest, in file order; relative audio paths are taken from the manifest's folder.

    Raises ValueError naming the file and line for a line that is not a valid entry.
    """
    path = Path(path)
    base = path.absolute().parent
    entries = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entries.append(_entry_from_json(json.loads(line), base))
            except (json.JSONDecodeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: not a manifest entry: {error}") from None
    return entries


def write_manifest(entries: Iterable[ManifestEntry], path: str | os.PathLike) -> Path:
    """Write entries as JSON lines, atomically: readers see the old file or the whole new one, never a part.

    Audio inside the manifest's folder is written relative to it; optional fields that are None are left out.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.absolute().parent
    atomic_write_text(path, "".join(json.dumps(_entry_to_json(entry, base), ensure_ascii=False) + "\n"
                                    for entry in entries))
    return path


def librivox_manifest(data_dir: str | os.PathLike = LIBRIVOX_DIR) -> list[ManifestEntry]:
    """The five LibriVox clips (Sense and Sensibility, 16 kHz, 3-7 s each) with their lower-case transcripts."""
    data_dir = Path(data_dir)
    transcription = data_dir / "transcription"
    _require(transcription, "pocketsphinx-testdata")
    entries = []
    for number, line in enumerate(transcription.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = _SPHINX_TRANSCRIPT_LINE.match(line.strip())
        if match is None:
            raise ValueError(f"{transcription}:{number}: expected '<s> words </s> (clip-id)', got {line!r}")
        audio = data_dir / f"{match['id']}.wav"
        _require(audio, "pocketsphinx-testdata")
        entries.append(ManifestEntry(audio, match["text"], id=match["id"], language="en", source="librivox"))
    return entries


def allison_manifest(
    limit: int | None = None,
    *,
    sounds_dir: str | os.PathLike = ALLISON_DIR,
    transcripts: str | os.PathLike = ALLISON_TRANSCRIPTS,
) -> list[ManifestEntry]:
    """Allison Smith's English telephone prompts (8 kHz wav) with their transcripts, in the list's order.

    Prompts whose transcript holds a bracketed note ("[this is a simple beep tone]", "dollar [$]") are
    left out, as are listed prompts with no wav file. `limit` keeps the first that many.
    """
    sounds_dir, transcripts = Path(sounds_dir), Path(transcripts)
    _require(sounds_dir, "asterisk-core-sounds-en-wav")
    _require(transcripts, "asterisk-core-sounds-en")
    entries = []
    with gzip.open(transcripts, "rt", encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if not line or line.startswith(";") or ": " not in line:  # blank, comment, or not "name: text"
                continue
            name, text = (part.strip() for part in line.split(": ", 1))
            audio = sounds_dir / f"{name}.wav"  # names may hold a subfolder: "digits/1"
            if not text or _BRACKET_NOTE.search(text) or not audio.is_file():
                continue
            entries.append(ManifestEntry(audio, text, id=name, language="en", source="allison"))
            if limit is not None and len(entries) >= limit:
                break
    return entries


def longform_manifest(
    entries: Sequence[ManifestEntry],
    out_dir: str | os.PathLike,
    target_seconds: float = 120.0,
    gap_seconds: float = 0.5,
) -> list[ManifestEntry]:
    """Join clips, in order, into 16 kHz wav files of about `target_seconds` each, `gap_seconds` of silence apart.

    A file ends at the clip boundary nearest the target, so it misses by at most half a clip. The clips
    left over become a last, shorter file when they make at least half the target, or when they are all
    there is. Each file's reference is its clips' references joined by spaces; its source is
    ``longform:SOURCE`` when all the clips share one source (else ``longform``).
    """
    if target_seconds <= 0 or gap_seconds < 0:
        raise ValueError(f"need target_seconds > 0 and gap_seconds >= 0, got {target_seconds} and {gap_seconds}")
    if not entries:
        raise ValueError("no clips to join: entries is empty")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    gap = np.zeros(round(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    target_samples = target_seconds * SAMPLE_RATE

    groups: list[tuple[list[np.ndarray], list[str]]] = []
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    length = 0
    for entry in entries:
        clip = load_audio(entry.audio)
        if pieces:
            joined_length = length + gap.shape[0] + clip.shape[0]
            if joined_length - target_samples > target_samples - length:  # closer to the target without it
                groups.append((pieces, texts))
                pieces, texts, length = [], [], 0
            else:
                pieces.append(gap)
                length += gap.shape[0]
        pieces.append(clip)
        texts.append(entry.text)
        length += clip.shape[0]
        if length >= target_samples:
            groups.append((pieces, texts))
            pieces, texts, length = [], [], 0
    if pieces and (length >= target_samples / 2 or not groups):
        groups.append((pieces, texts))

    languages = {entry.language for entry in entries}
    language = languages.pop() if len(languages) == 1 else None
    sources = {entry.source for entry in entries}
    source = f"longform:{sources.pop()}" if len(sources) == 1 and None not in sources else "longform"
    joined = []
    for index, (group_pieces, group_texts) in enumerate(groups):
        audio = out_dir / f"longform_{index:03d}.wav"
        _write_wav(audio, np.concatenate(group_pieces))
        joined.append(ManifestEntry(audio, " ".join(group_texts), id=f"longform-{index:03d}", language=language,
                                    source=source))
    return joined


def tts_manifest(texts: Sequence[str], out_dir: str | os.PathLike, *, seed: int = 0) -> list[ManifestEntry]:
    """Speak each text with hibari-tts (a natural-sounding English voice) into a 16 kHz wav file.

    `seed` fixes the synthesiser's noise, so the same texts give the same audio.
    """
    try:
        from hibari import SAMPLE_RATE as TTS_SAMPLE_RATE
        from hibari import Hibari
    except ImportError as error:
        raise DatasetUnavailableError(
            f"speech synthesis needs the PyPI package hibari-tts (pip install hibari-tts==0.2.1): {error}"
        ) from error
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    speaker = Hibari()
    entries = []
    for index, text in enumerate(texts):
        speech = np.asarray(speaker(text, seed=seed), dtype=np.float32)
        if speech.shape[0] == 0:
            raise ValueError(f"hibari-tts produced no audio for text {index} ({text!r})")
        audio = out_dir / f"tts_{index:03d}.wav"
        _write_wav(audio, librosa.resample(speech, orig_sr=TTS_SAMPLE_RATE, target_sr=SAMPLE_RATE))
        entries.append(ManifestEntry(audio, text, id=f"tts-{index:03d}", language="en", source="tts"))
    return entries


def tts_longform_manifest(
    out_dir: str | os.PathLike,
    passages: Mapping[str, Sequence[str]] | None = None,
    *,
    gap_seconds: float = 0.3,
    seed: int = 0,
) -> list[ManifestEntry]:
    """One long recording per passage: its sentences spoken with hibari-tts, joined `gap_seconds` apart.

    `passages` maps a name to its sentences (default: `LONGFORM_PASSAGES`); sentence by sentence because
    the synthesiser speaks one sentence at a time best. Each entry's id is ``longform-<name>``, its
    reference the sentences joined by spaces, its source ``longform:tts``.
    """
    passages = LONGFORM_PASSAGES if passages is None else passages
    out_dir = Path(out_dir).absolute()
    joined = []
    for name, sentences in passages.items():
        clips = tts_manifest(sentences, out_dir / name / "sentences", seed=seed)
        seconds = sum(load_audio(clip.audio).shape[0] for clip in clips) / SAMPLE_RATE
        # a target past the passage's length (gaps included) keeps it one recording
        (entry,) = longform_manifest(clips, out_dir / name, target_seconds=seconds + gap_seconds * len(clips) + 1,
                                     gap_seconds=gap_seconds)
        joined.append(replace(entry, id=f"longform-{name}"))
    return joined


def huggingface_manifest(
    dataset: str = "librispeech_asr",
    config: str | None = "clean",
    split: str = "test",
    *,
    out_dir: str | os.PathLike,
    limit: int | None = None,
) -> list[ManifestEntry]:
    """The first `limit` rows (all when None) of a Hugging Face speech dataset, audio saved under `out_dir`.

    Needs the `datasets` package and a reachable hub; raises DatasetUnavailableError naming what is missing.
    The audio is saved as the dataset stores it (flac for LibriSpeech), undecoded.
    """
    try:
        import datasets
    except ImportError as error:
        raise DatasetUnavailableError(
            f"loading {dataset!r} from the Hugging Face hub needs the PyPI package datasets (pip install datasets)"
        ) from error
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "/".join(part for part in (dataset, config, split) if part)
    entries = []
    try:
        rows = datasets.load_dataset(dataset, config, split=split, streaming=True)
        # undecoded audio is just the file's bytes: no audio decoding backend needed, nothing re-encoded
        rows = rows.cast_column("audio", datasets.Audio(decode=False))
        for index, row in enumerate(rows):
            if limit is not None and index >= limit:
                break
            entries.append(_save_hub_row(row, index, out_dir, name))
    except (DatasetUnavailableError, ValueError):
        raise
    except Exception as error:  # the hub client raises many types (HTTP, offline mode, missing dataset)
        raise DatasetUnavailableError(
            f"could not load {name} from the Hugging Face hub ({type(error).__name__}: {error})"
        ) from error
    return entries


def _save_hub_row(row: dict, index: int, out_dir: Path, name: str) -> ManifestEntry:
    column = next((column for column in _HUB_TEXT_COLUMNS if column in row), None)
    if column is None:
        raise ValueError(f"{name} has no transcript column; looked for {', '.join(_HUB_TEXT_COLUMNS)}")
    stored = row["audio"]
    source = Path(stored.get("path") or "")
    audio = out_dir / f"{index:06d}{source.suffix or '.wav'}"
    if stored.get("bytes") is not None:
        audio.write_bytes(stored["bytes"])
    elif source.is_file():
        audio.write_bytes(source.read_bytes())
    else:
        raise ValueError(f"{name} row {index} holds neither audio bytes nor a readable audio path")
    row_id = row.get("id")
    return ManifestEntry(audio, row[column], id=str(row_id) if row_id is not None else f"{index:06d}",
                         source=f"hub:{name}")


def _entry_from_json(record: object, base: Path) -> ManifestEntry:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    unknown = set(record) - _FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_FIELDS))}")
    for field in ("audio", "text"):
        if not isinstance(record.get(field), str):
            raise ValueError(f"field {field!r} must be a string")
    for field in ("id", "language", "source"):
        if record.get(field) is not None and not isinstance(record[field], str):
            raise ValueError(f"field {field!r} must be a string when present")
    return ManifestEntry(base / record["audio"], record["text"], record.get("id"), record.get("language"),
                         record.get("source"))


def _entry_to_json(entry: ManifestEntry, base: Path) -> dict[str, str]:
    audio = Path(entry.audio)
    if audio.is_absolute() and audio.is_relative_to(base):
        audio = audio.relative_to(base)
    record = {"audio": str(audio), "text": entry.text}
    if entry.id is not None:
        record["id"] = entry.id
    if entry.language is not None:
        record["language"] = entry.language
    if entry.source is not None:
        record["source"] = entry.source
    return record


def _require(path: Path, debian_package: str) -> None:
    if not path.exists():
        raise DatasetUnavailableError(
            f"{path} is missing; it comes with the Debian package {debian_package} (apt-get install {debian_package})"
        )


def _write_wav(path: Path, audio: np.ndarray) -> None:
    sf.write(str(path), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
