"""Benchmark: ``WhisperModel.transcribe`` end to end with no draft, a distilled draft and other drafts.

    python -m evaluation.distill_benchmark --target base --draft distilled --draft tiny.en --repeats 3

Each mode is one ``WhisperModel`` on the same loaded target, kept for the whole run (as a user transcribing
a folder keeps one), so its draft-length policies learn across clips.

Every clip is transcribed by every mode in turn, round after round, so that a machine whose load
changes during the run slows all modes alike; each mode's time is its median over rounds, summed over
clips. Output must be token-identical to the target alone (checked, and shown in the table).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from whisper_spec.audio import load_audio
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.model import WhisperModel

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@dataclass(frozen=True)
class ModeResult:
    draft: str | None
    wall_seconds: float  # sum over clips of the median wall time
    stats: SpeculationStats  # summed over clips, from the last round
    identical: bool  # every clip's tokens equal the target alone's


def run(target: str, drafts: list[str | None], clips: list[Path], repeats: int,
        fixed_draft_length: int | None = None, draft_length: int | None = None,
        draft_confidence: float | None = None) -> list[ModeResult]:
    """``fixed_draft_length``: draft exactly that many tokens per round (None: the adaptive length, up to
    ``draft_length``); ``draft_confidence``: drafts end a round below this probability of their proposal."""
    audio = [load_audio(c) for c in clips]
    options = {"draft_confidence": draft_confidence}
    if fixed_draft_length is not None:
        options.update(draft_length=fixed_draft_length, adaptive_draft_length=False)
    elif draft_length is not None:
        options.update(draft_length=draft_length)
    baseline = WhisperModel(target, None)  # loaded outside the clock
    models = {draft: baseline.with_draft(draft) for draft in drafts}
    for model in models.values():
        model.transcribe(audio[0], **options)  # warm-up
    walls = {d: [[] for _ in audio] for d in drafts}
    stats = {d: [SpeculationStats() for _ in audio] for d in drafts}
    tokens = {d: [None] * len(audio) for d in drafts}
    for _ in range(repeats):
        for i, samples in enumerate(audio):
            for draft in drafts:
                result = models[draft].transcribe(samples, **options)
                walls[draft][i].append(result.stats.wall_seconds)
                stats[draft][i] = result.stats
                tokens[draft][i] = result.tokens
    reference = tokens[drafts[0]]
    return [ModeResult(d, sum(statistics.median(w) for w in walls[d]), sum(stats[d], SpeculationStats()),
                       tokens[d] == reference) for d in drafts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="base", help="the target model")
    parser.add_argument("--draft", action="append", default=[], help="a draft spec to compare (repeatable)")
    parser.add_argument("--audio", action="append", type=Path, default=[],
                        help="audio files (default: the five LibriVox clips, real speech no draft was trained on)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all clips and modes")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--fixed-draft-length", type=int, default=None, metavar="K",
                        help="draft K tokens every round (default: the adaptive length, which switches a "
                             "draft that does not pay off, so its acceptance is then not measured)")
    parser.add_argument("--draft-length", type=int, default=None, metavar="K",
                        help="the largest k of the adaptive length (default: each draft's own)")
    parser.add_argument("--draft-confidence", type=float, default=None,
                        help="drafts end a round once the probability they give their proposal falls below "
                             "this (default: each draft's own choice, as transcribe() makes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clips = args.audio or sorted(LIBRIVOX.glob("*.wav"))
    results = run(args.target, [None] + args.draft, clips, args.repeats, args.fixed_draft_length,
                  args.draft_length, args.draft_confidence)
    baseline = results[0].wall_seconds
    length = "adaptive" if args.fixed_draft_length is None else f"fixed {args.fixed_draft_length}"
    if args.draft_confidence is not None:
        length += f", ending rounds below confidence {args.draft_confidence}"
    print(f"target {args.target}, {len(clips)} clips, median of {args.repeats} interleaved rounds, "
          f"{torch.get_num_threads()} threads, draft length {length}")
    print(f"{'draft':18s} {'wall s':>7s} {'speed-up':>8s} {'encoder':>8s} {'draft':>7s} {'verify':>7s} "
          f"{'tokens':>6s} {'calls':>5s} {'accept':>6s} {'acc/rnd':>7s} identical")
    for r in results:
        s = r.stats
        print(f"{str(r.draft):18s} {r.wall_seconds:7.2f} {baseline / r.wall_seconds:7.2f}x {s.encoder_seconds:8.2f} "
              f"{s.draft_seconds:7.2f} {s.verify_seconds:7.2f} {s.tokens:6d} {s.target_calls:5d} "
              f"{s.acceptance_rate:6.2f} {s.mean_accepted_length:7.2f} {r.identical}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
