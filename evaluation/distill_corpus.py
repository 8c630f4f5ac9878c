"""The audio the shipped `base` draft was distilled on, rebuilt from packages, with its held-out split.

    python -m evaluation.distill_corpus --out ~/distill-corpus --tts 400
    whisper-spec distill --target base --audio ~/distill-corpus/train --held-out ~/distill-corpus/held-out \
        --output base-distilled.pt

Training audio: Allison's prompts after the first 30 (real speech, one speaker) and hibari-tts speaking
quotations from the Debian `fortunes` package (synthetic speech of varied English prose). Held-out audio,
which training never sees: the five LibriVox clips and the first 30 Allison prompts, the same files as
`whisper-spec eval --librivox --allison 30`, so the evaluation of a distilled draft is on unseen speech;
`held-out-joined` holds the same clips joined into windows of about 28 s (long recordings, where decoding
rather than the encoder dominates). Files are links to the packages' audio plus the synthesised wavs.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from evaluation.manifests import allison_manifest, librivox_manifest, longform_manifest, tts_manifest

FORTUNES_DIR = Path("/usr/share/games/fortunes")  # Debian fortunes
HELD_OUT_ALLISON = 30  # the evaluation's `--allison 30`
# prose-like collections (the others hold ASCII art, code, limericks laid out as verse)
FORTUNE_FILES = ("education", "fortunes", "humorists", "law", "literature", "love", "people", "platitudes",
                 "politics", "science", "wisdom", "work")
_SPEAKABLE = re.compile(r"^[A-Za-z0-9 ,.;:'\"!?()-]+$")


def fortune_texts(count: int, seed: int = 0, folder: Path = FORTUNES_DIR) -> list[str]:
    """``count`` quotations of 40-250 plain characters, attribution lines dropped, shuffled by ``seed``."""
    texts = []
    for name in FORTUNE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="latin-1").split("\n%\n"):
            lines = [line for line in entry.splitlines() if not line.lstrip().startswith("--")]
            if any(line.startswith((" ", "\t")) for line in lines):  # verse, dialogue layouts, code
                continue
            text = " ".join(" ".join(lines).split())
            if 40 <= len(text) <= 250 and _SPEAKABLE.match(text):
                texts.append(text)
    if len(texts) < count:
        raise SystemExit(f"found {len(texts)} usable quotations under {folder} (apt-get install fortunes), "
                         f"need {count}")
    random.Random(seed).shuffle(texts)
    return texts[:count]


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(target.resolve())


def build(out: Path, tts_count: int, seed: int = 0) -> tuple[int, int]:
    """Write the corpus under ``out`` (train/allison, train/tts, held-out); returns (train, held-out) file counts."""
    allison = allison_manifest()
    held = list(librivox_manifest()) + allison[:HELD_OUT_ALLISON]
    for entry in held:
        _link(entry.audio, out / "held-out" / f"{entry.id.replace('/', '_')}{entry.audio.suffix}")
    longform_manifest(held, out / "held-out-joined", target_seconds=28.0)
    for entry in allison[HELD_OUT_ALLISON:]:
        _link(entry.audio, out / "train" / "allison" / f"{entry.id.replace('/', '_')}{entry.audio.suffix}")
    tts_dir = out / "train" / "tts"
    if len(list(tts_dir.glob("*.wav"))) < tts_count:
        tts_manifest(fortune_texts(tts_count, seed), tts_dir, seed=seed)
    return len(allison) - HELD_OUT_ALLISON + tts_count, len(held)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to build the corpus in")
    parser.add_argument("--tts", type=int, default=400, help="how many quotations to synthesise (about 8 s each)")
    parser.add_argument("--seed", type=int, default=0, help="which quotations, and the synthesiser's noise")
    args = parser.parse_args(argv)
    train, held = build(args.out, args.tts, args.seed)
    print(f"{args.out}: {train} training files (train/allison, train/tts), {held} held-out files (held-out, "
          f"and joined into 28-s windows in held-out-joined)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
