"""The distillation corpus builder (evaluation.distill_corpus): which quotations are spoken, and that the
held-out real speech never lands in the training folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.distill_corpus import fortune_texts

ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def _fortunes(folder: Path, entries: list[str]) -> Path:
    (folder / "wisdom").write_text("\n%\n".join(entries) + "\n%\n", encoding="latin-1")
    return folder


def test_quotations_drop_attributions_verse_and_unspeakable_text(tmp_path):
    folder = _fortunes(tmp_path, [
        "A penny saved is a penny earned,\nas the saying goes in every country.\n\t\t-- Benjamin Franklin",
        "Roses are red,\n    violets are blue, this one is laid out as verse.",
        "Too short.",
        "Code like x = y + 1; is not something a reader says aloud <ever>, and it is long enough.",
        "The only thing we have to fear is fear itself, said the president on the radio.",
    ])
    texts = fortune_texts(2, seed=0, folder=folder)
    assert sorted(texts) == [
        "A penny saved is a penny earned, as the saying goes in every country.",
        "The only thing we have to fear is fear itself, said the president on the radio.",
    ]
    with pytest.raises(SystemExit, match="found 2 usable quotations"):
        fortune_texts(3, folder=folder)


def test_the_shuffle_is_reproducible(tmp_path):
    folder = _fortunes(tmp_path, [f"Quotation number {i} is a sentence long enough to be spoken aloud."
                                  for i in range(20)])
    assert fortune_texts(5, seed=1, folder=folder) == fortune_texts(5, seed=1, folder=folder)
    assert fortune_texts(5, seed=1, folder=folder) != fortune_texts(5, seed=2, folder=folder)


@pytest.mark.skipif(not ALLISON.is_dir() or not LIBRIVOX.is_dir(), reason="needs the Debian speech packages")
def test_held_out_files_never_appear_in_training(tmp_path):
    from evaluation.distill_corpus import build

    train, held = build(tmp_path, tts_count=0)
    training = {p.resolve() for p in (tmp_path / "train").rglob("*.wav")}
    held_out = {p.resolve() for p in (tmp_path / "held-out").glob("*.wav")}
    assert len(held_out) == held == 35 and len(training) == train
    assert not training & held_out
    assert {p.parent for p in held_out if "librivox" in str(p)} == {LIBRIVOX.resolve()}
    assert len(list((tmp_path / "held-out-joined").glob("*.wav"))) >= 1
