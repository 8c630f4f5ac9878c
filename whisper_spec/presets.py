"""Named target/draft pairs: the production pairs for machines with a model hub, and the offline ones."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    target: str  # a name ``load_whisper`` resolves: bundled short name, directory or hub id
    draft: str | None  # a draft spec ``resolve_draft`` understands; None: the target alone
    note: str  # one line for --help and the demo


PRESETS: dict[str, Preset] = {
    "base": Preset("base", "distilled", "offline default: multilingual base, drafted by its shipped distilled draft "
                   "(tiny.en's decoder re-wired to base's encoder)"),
    "base+tiny.en": Preset("base", "tiny.en", "offline: base drafted by English-only tiny.en through text"),
    "base+layers": Preset("base", "layers:0,5", "offline: base drafted by its own first and last decoder layers"),
    "tiny.en": Preset("tiny.en", None, "offline: English-only tiny.en alone"),
    "large-v3": Preset("openai/whisper-large-v3", "distil-whisper/distil-large-v3", "production: large-v3 with distil-large-v3 (shared encoder)"),
    "large-v2": Preset("openai/whisper-large-v2", "distil-whisper/distil-large-v2", "large-v2 with distil-large-v2"),
    "medium.en": Preset("openai/whisper-medium.en", "distil-whisper/distil-medium.en", "medium.en with distil-medium.en"),
    "small.en": Preset("openai/whisper-small.en", "distil-whisper/distil-small.en", "small.en with distil-small.en"),
    "large-v3+tiny": Preset("openai/whisper-large-v3", "openai/whisper-tiny", "large-v3 drafted by multilingual tiny (own encoder)"),
}

DEFAULT_PRESET = "base"
