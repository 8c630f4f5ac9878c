"""Word and character error rates of transcripts, over Whisper-normalised text.

Corpus-level rates are total edits over total reference length (jiwer's definition), not a mean of
per-utterance rates, so long utterances weigh more. `word_errors` and `char_errors` give the edit
counts of one utterance; counts add up, and a corpus rate is the rate of their sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

from evaluation.text_normalizer import normalize_english


@dataclass(frozen=True)
class ErrorCounts:
    """Edit counts aligning a hypothesis to a reference (in words or in characters)."""

    substitutions: int = 0
    deletions: int = 0  # reference units missing from the hypothesis
    insertions: int = 0  # hypothesis units absent from the reference
    hits: int = 0  # reference units matched exactly

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def rate(self) -> float:
        """errors / reference_length; 0.0 for an empty reference matched by an empty hypothesis,
        inf for an empty reference against a non-empty one."""
        if self.reference_length == 0:
            return float("inf") if self.errors else 0.0
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
        )


def word_errors(reference: str, hypothesis: str, *, normalize: bool = True) -> ErrorCounts:
    """Word edits turning `reference` into `hypothesis`, after Whisper normalisation unless normalize=False."""
    reference, hypothesis = _prepared(reference, hypothesis, normalize)
    out = jiwer.process_words(reference, hypothesis)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits)


def char_errors(reference: str, hypothesis: str, *, normalize: bool = True) -> ErrorCounts:
    """Character edits (spaces between words count as characters), after normalisation unless normalize=False."""
    reference, hypothesis = _prepared(reference, hypothesis, normalize)
    out = jiwer.process_characters(reference, hypothesis)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits)


def wer(references: Sequence[str], hypotheses: Sequence[str], *, normalize: bool = True) -> float:
    """Corpus word error rate: all word edits over all reference words."""
    return _corpus_counts(word_errors, references, hypotheses, normalize).rate


def cer(references: Sequence[str], hypotheses: Sequence[str], *, normalize: bool = True) -> float:
    """Corpus character error rate: all character edits over all reference characters."""
    return _corpus_counts(char_errors, references, hypotheses, normalize).rate


def _corpus_counts(count_errors, references, hypotheses, normalize: bool) -> ErrorCounts:
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(texts, str):
            raise TypeError(f"{name} must be a sequence of transcripts, not one string; wrap it in a list")
    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    if len(references) == 0:
        raise ValueError("no transcripts to score: references and hypotheses are empty")
    total = ErrorCounts()
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        total += count_errors(reference, hypothesis, normalize=normalize)
    return total


def _prepared(reference: str, hypothesis: str, normalize: bool) -> tuple[str, str]:
    if normalize:
        return normalize_english(reference), normalize_english(hypothesis)
    return reference.strip(), hypothesis.strip()
