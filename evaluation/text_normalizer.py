"""Whisper's English text normaliser: the form in which transcripts are compared for WER and CER.

It lower-cases, drops bracketed and parenthesised notes, the fillers hmm/mm/mhm/mmm/uh/um and
punctuation, expands contractions and titles ("Mr." -> "mister"), writes numbers and currency as
digits ("twenty five" -> "25", "five dollars" -> "$5") and British spellings as American ones
("colour" -> "color"). These are the rules of the Whisper paper (appendix C) that the Open ASR
Leaderboard adopted.

The rules come from transformers' port of openai-whisper's `EnglishTextNormalizer` (the same code as
openai-whisper 20250625's `whisper/normalizers/english.py`, compared line by line), so no new
dependency is needed. transformers does not ship the British-to-American spelling table (checkpoints
carry it on the hub as normalizer.json), so the table is vendored beside this module:

    whisper_english_spelling.json is `whisper/normalizers/english.json` from the openai-whisper
    20250625 source distribution on PyPI, unchanged (1,739 entries).
    Copyright (c) 2022 OpenAI. Released under the MIT License: permission is granted, free of charge,
    to deal in it without restriction, provided this copyright notice and the permission notice are
    kept; it is provided "as is", without warranty of any kind.

The Open ASR Leaderboard's repository keeps its own copy of these rules, and since 2025 has added
small changes of its own (collapsing spelled acronyms such as "a.b.c." to "abc", ellipsis handling,
edits to the spelling table). Those are not reproduced: scores here are Whisper's normaliser's, and
can differ from the leaderboard's current code on text with those patterns.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

SPELLING_TABLE = Path(__file__).with_name("whisper_english_spelling.json")  # British -> American, from openai-whisper


@functools.cache
def english_normalizer() -> EnglishTextNormalizer:
    """The shared normaliser (the spelling table is read once)."""
    with SPELLING_TABLE.open(encoding="utf-8") as table:
        return EnglishTextNormalizer(json.load(table))


def normalize_english(text: str) -> str:
    """Whisper's normal form of English `text`: "Mr. Smith paid $20." -> "mister smith paid $20".

    Leading and trailing spaces, which the Whisper normaliser can leave and which no word-level or
    character-level score counts, are stripped.
    """
    return english_normalizer()(text).strip()
