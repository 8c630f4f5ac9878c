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
    "large-v3": Preset("openai/whisper-large-v3", "distil-whisper/distil-large-v3",
                       "production: large-v3 with distil-large-v3 (shared encoder)"),
    "large-v2": Preset("openai/whisper-large-v2", "distil-whisper/distil-large-v2", "large-v2 with distil-large-v2"),
    "medium.en": Preset("openai/whisper-medium.en", "distil-whisper/distil-medium.en",
                        "medium.en with distil-medium.en"),
    "small.en": Preset("openai/whisper-small.en", "distil-whisper/distil-small.en", "small.en with distil-small.en"),
    "large-v3+tiny": Preset("openai/whisper-large-v3", "openai/whisper-tiny",
                            "large-v3 drafted by multilingual tiny (own encoder)"),
}

DEFAULT_PRESET = "base"
DEFAULT = "default"  # draft=DEFAULT: the preset's draft (or the target's best known draft)


def resolve_models(preset: str | None, target: str | None, draft: str | None) -> tuple[str, str | None]:
    """(target, draft) from a preset name and/or explicit names; ``draft=DEFAULT`` takes the preset's.

    Without a preset or a target, the default preset's; a target without a preset drafts with the first
    preset's draft for that target, if there is one.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    chosen = PRESETS[preset] if preset else (PRESETS[DEFAULT_PRESET] if target is None else None)
    target = target or chosen.target
    if draft == DEFAULT:
        if chosen is None:
            chosen = next((p for p in PRESETS.values() if p.target == target), None)
        draft = chosen.draft if chosen is not None else None
    return target, draft
