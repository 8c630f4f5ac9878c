"""How often a compute type flips a greedy choice between a verify pass and a plain step, on real speech.

Run ``python -m evaluation.near_ties`` (defaults: base with the layers:0,5 and tiny.en drafts, bfloat16
on the CPU; ``--device cuda --compute-type float16`` on a GPU; ``--compute-type int8`` checks that the int8
decoder's passes are position-exact). For each file it reports:

- rounding: teacher-forced over the greedy transcript, the largest change of a top-two logit margin
  between one-token steps and one multi-token pass over the same prefix (what ``near_tie_margin`` must
  exceed twice over), and the positions whose argmax differs between the two;
- parity without the near-tie rule: speculative tokens == the same engine's greedy tokens (fixed k, so
  that the draft is used), per file;
- parity with the rule (the default in half precision), and how many positions it rescored.

Prints one markdown table per compute type; every number is a count over the files, nothing is timed.
"""

from __future__ import annotations

import argparse

import torch

from evaluation.manifests import allison_manifest, librivox_manifest
from whisper_spec.audio import load_audio
from whisper_spec.core.prefix_cache import PrefixCache
from whisper_spec.model import WhisperModel
from whisper_spec.whisper.engine import SpeculativeWhisper, WindowOptions
from whisper_spec.whisper.features import encode_audio
from whisper_spec.whisper.near_ties import default_margin


def rounding(engine: SpeculativeWhisper, audio, tokens: list[int]) -> tuple[float, int]:
    """(largest top-two margin change, argmax flips) between steps and one pass over ``tokens``."""
    hidden, _ = encode_audio(engine.target, [audio])
    engine.decoder.begin(hidden)
    prompt = engine.tokens.prompt("en", "transcribe")
    sequence = prompt + tokens
    row = torch.tensor([0])
    steps = PrefixCache(engine.decoder, 1)
    stepped = torch.cat([steps.logits(row, [sequence[: len(prompt) + i]], [1])[0]
                         for i in range(len(tokens) + 1)]).float()  # [n+1, V]
    whole = PrefixCache(engine.decoder, 1).logits(row, [sequence], [len(tokens) + 1])[0].float()  # [n+1, V]
    top2 = stepped.topk(2, dim=-1).indices
    margin_stepped = stepped.gather(1, top2[:, :1]) - stepped.gather(1, top2[:, 1:])
    margin_whole = whole.gather(1, top2[:, :1]) - whole.gather(1, top2[:, 1:])
    change = float((margin_stepped - margin_whole).abs().max())
    flips = int((stepped.argmax(-1) != whole.argmax(-1)).sum())
    return change, flips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="base", help="the target model (default base, offline)")
    parser.add_argument("--draft", action="append", dest="drafts",
                        help="a draft to compare, repeatable (default: layers:0,5 and tiny.en)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--compute-type", default="bfloat16",
                        help="comma-separated compute types: bfloat16, float16, float32, int8, int8_encoder")
    parser.add_argument("--allison", type=int, default=10, help="Allison prompts added to the 5 LibriVox clips")
    parser.add_argument("--draft-length", type=int, default=6, help="fixed k for the speculative runs")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    drafts = args.drafts or ["layers:0,5", "tiny.en"]
    entries = librivox_manifest() + (allison_manifest(limit=args.allison) if args.allison else [])
    clips = [load_audio(e.audio) for e in entries]
    for name in args.compute_type.split(","):
        model = WhisperModel(args.target, None, device=args.device, compute_type=name)
        margin = default_margin(model.dtype)
        base = model.engine
        off = WindowOptions(language="en", draft_length=args.draft_length, adaptive_draft_length=False,
                            near_tie_margin=0.0)
        on = WindowOptions(language="en", draft_length=args.draft_length, adaptive_draft_length=False)
        greedy_off = [base.decode_windows([c], off)[0] for c in clips]
        greedy_on = [base.decode_windows([c], on)[0] for c in clips]
        changes, flips = zip(*(rounding(base, c, list(w.tokens)) for c, w in zip(clips, greedy_off)))
        tokens = sum(len(w.tokens) + 1 for w in greedy_off)
        print(f"\n{args.target}, {name} on {args.device}, {len(clips)} files (5 LibriVox + {args.allison} Allison), "
              f"{tokens} tokens; default near_tie_margin {margin}\n")
        print(f"rounding (teacher-forced, steps vs one pass): largest top-two margin change {max(changes):.3g}; "
              f"argmax flips at {sum(flips)} of {tokens} positions, in {sum(f > 0 for f in flips)} files")
        same = sum(a.tokens == b.tokens for a, b in zip(greedy_on, greedy_off))
        print(f"greedy with the rule == greedy without it: {same}"
              f"/{len(clips)} files; positions rescored in greedy: {sum(w.stats.rescored for w in greedy_on)}\n")
        print("| draft | parity without the rule | parity with the rule | positions rescored |")
        print("|---|---:|---:|---:|")
        for draft in drafts:
            engine = model.with_draft(draft).engine
            spec_off = [engine.decode_windows([c], off)[0] for c in clips]
            spec_on = [engine.decode_windows([c], on)[0] for c in clips]
            same_off = sum(s.tokens == g.tokens for s, g in zip(spec_off, greedy_off))
            same_on = sum(s.tokens == g.tokens for s, g in zip(spec_on, greedy_on))
            print(f"| {draft} | {same_off}/{len(clips)} | {same_on}/{len(clips)} | "
                  f"{sum(w.stats.rescored for w in spec_on)} |", flush=True)


if __name__ == "__main__":
    main()
