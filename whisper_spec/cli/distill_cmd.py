"""``whisper-spec distill``: make a small draft for any Whisper target from a folder of unlabeled audio."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from whisper_spec.distill.data import TargetLabeler, audio_files
from whisper_spec.distill.train import TrainOptions, train_draft


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="distil a cheap draft for a Whisper target from unlabeled audio",
        description="Run the target once over the audio (its greedy transcripts are the labels, cached), "
                    "then train a one- or two-layer draft that reads the target's encoder outputs. The "
                    "result loads as a draft by path: whisper-spec transcribe --draft PATH.pt")
    parser.add_argument("--target", default="base", help="the target: short name, directory or hub id (default base)")
    parser.add_argument("--audio", action="append", required=True, type=Path,
                        help="a folder of training audio (searched recursively); repeat for more folders")
    parser.add_argument("--held-out", action="append", type=Path, default=[],
                        help="a folder of held-out audio for the acceptance score; default: every 10th training window")
    parser.add_argument("--output", type=Path, required=True, help="where to write the draft (.pt)")
    parser.add_argument("--head", choices=("tokens", "features"), default="tokens",
                        help="tokens: the draft reads tokens only (distil-whisper's design); features: it also "
                             "reads the target's hidden state at the previous position where the target has "
                             "computed it (EAGLE's design; the engine records the target's states for it)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated target layers the draft starts from, e.g. 0 or 0,-1 (default: 0 "
                             "for --head tokens, -1 for --head features, whose input is already a final state)")
    parser.add_argument("--feature-weight", type=float, default=TrainOptions.feature_weight,
                        help="--head features: weight of a loss on the draft's prediction of the target's "
                             "next state (default 0: the draft never reads its own predictions)")
    parser.add_argument("--state-dropout", type=float, default=TrainOptions.state_dropout,
                        help="--head features: share of positions trained without the previous state, as a "
                             "draft's second and later tokens of a round run")
    parser.add_argument("--steps", type=int, default=TrainOptions.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=TrainOptions.batch_size, help="windows per step")
    parser.add_argument("--learning-rate", type=float, default=TrainOptions.learning_rate, help="peak AdamW learning rate")
    parser.add_argument("--common-tokens", type=int, default=TrainOptions.common_tokens,
                        help="the draft can also emit every id below this (the BPE's most frequent tokens)")
    parser.add_argument("--eval-every", type=int, default=TrainOptions.eval_every,
                        help="steps between held-out scores and training checkpoints")
    parser.add_argument("--pack-seconds", type=float, default=28.0,
                        help="join consecutive short clips into windows of up to this many seconds (0: one clip per window)")
    parser.add_argument("--language", default=None, help="decode all audio in this language (default: detect per window)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the target's labels are cached")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a training state exists")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from whisper_spec.whisper.checkpoints import load_whisper

    if args.threads:
        torch.set_num_threads(args.threads)
    features = args.head == "features"
    try:
        layers = tuple(int(x) for x in (args.layers or ("-1" if features else "0")).split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--layers {args.layers!r}: expected comma-separated integers such as 0,-1") from None
    options = TrainOptions(init_layers=layers, steps=args.steps, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, common_tokens=args.common_tokens,
                           eval_every=args.eval_every, device=args.device, features=features,
                           feature_weight=args.feature_weight, state_dropout=args.state_dropout)
    target = load_whisper(args.target, device=args.device, dtype=torch.float32)
    labeler = TargetLabeler(target, args.cache_dir, language=args.language)
    train_files = [f for folder in args.audio for f in audio_files(folder)]
    from tqdm import tqdm

    def progress(batches):
        return tqdm(batches, desc="labelling", unit="batch")

    train = labeler.examples(train_files, pack_seconds=args.pack_seconds, progress=progress)
    if args.held_out:
        held_files = [f for folder in args.held_out for f in audio_files(folder)]
        held_out = labeler.examples(held_files, pack_seconds=args.pack_seconds, progress=progress)
    else:
        held_out, train = train[::10], [e for i, e in enumerate(train) if i % 10]
    print(f"{len(train)} training windows ({sum(len(e.generated) for e in train)} tokens), "
          f"{len(held_out)} held-out windows")
    result = train_draft(target, train, held_out, args.output, options, resume=not args.no_resume)
    size = result.path.stat().st_size / 2**20
    print(f"draft: {result.path} ({size:.1f} MiB) after {result.steps} steps")
    for name, score in (("untrained", result.initial), ("distilled", result.final)):
        print(f"  {name:9s} held-out acceptance {score.acceptance_rate:.3f}, mean accepted length "
              f"{score.mean_accepted_length:.2f} (k={options.draft_length}), agreement {score.agreement:.3f}")
    print(f"use it: whisper-spec transcribe --target {args.target} --draft {result.path} FILE")
    return 0
