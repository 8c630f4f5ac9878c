"""``whisper-spec distill``: make a small draft for any Whisper target from a folder of unlabeled audio."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from whisper_spec.cli import VERBS
from whisper_spec.distill.data import TargetLabeler, audio_files, join_clips, pack_clips
from whisper_spec.distill.train import TrainOptions, build_vocabulary, train_draft


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help=VERBS["distill"],
        description="Run the target once over the audio (its greedy transcripts are the labels, cached), "
                    "then train a small draft that reads the target's encoder outputs: one or two of the "
                    "target's own decoder layers, or (--init-from) a smaller Whisper's decoder re-wired to "
                    "the target's encoder. The result loads as a draft by path: "
                    "whisper-spec transcribe --draft PATH.pt")
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
    parser.add_argument("--init-from", default=None, metavar="DONOR",
                        help="start the draft from this smaller Whisper's decoder (short name, directory or hub "
                             "id, e.g. tiny.en for base): it reads the target's encoder outputs through a "
                             "learned linear map (no second encoder) and emits target ids; --head tokens only")
    parser.add_argument("--encoder-fit-windows", type=int, default=96,
                        help="--init-from: training windows on which both encoders run once to fit the adapter "
                             "from the target's encoder outputs to the donor's (about 0.6 s each on a 2-core CPU)")
    parser.add_argument("--adapter-hidden", type=int, default=2048,
                        help="--init-from: width of the adapter's per-frame MLP beside its linear map (0: the "
                             "linear least-squares map alone; 2048 recovers much more of the donor, see distill.donor)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated layers the draft starts from, e.g. 0 or 0,-1: the target's (default: "
                             "0 for --head tokens, -1 for --head features, whose input is already a final state), "
                             "or with --init-from the donor's (default: all of them)")
    parser.add_argument("--feature-weight", type=float, default=TrainOptions.feature_weight,
                        help="--head features: weight of a loss on the draft's prediction of the target's "
                             "next state (default 0: the draft never reads its own predictions)")
    parser.add_argument("--state-dropout", type=float, default=TrainOptions.state_dropout,
                        help="--head features: share of positions trained without the previous state, as a "
                             "draft's second and later tokens of a round run")
    parser.add_argument("--steps", type=int, default=TrainOptions.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=TrainOptions.batch_size, help="windows per step")
    parser.add_argument("--learning-rate", type=float, default=TrainOptions.learning_rate,
                        help="peak AdamW learning rate")
    parser.add_argument("--common-tokens", type=int, default=TrainOptions.common_tokens,
                        help="the draft can also emit every id below this (the BPE's most frequent tokens)")
    parser.add_argument("--eval-every", type=int, default=TrainOptions.eval_every,
                        help="steps between held-out scores and training checkpoints")
    parser.add_argument("--pack-seconds", type=float, default=28.0,
                        help="join consecutive short clips into windows of up to this many seconds "
                             "(0: one clip per window)")
    parser.add_argument("--with-timestamps", action="store_true",
                        help="also label every window in timestamp mode (how transcribe() decodes audio longer "
                             "than 30 s) and train and score on both modes; labelling takes twice as long")
    parser.add_argument("--language", default=None,
                        help="decode all audio in this language (default: detect per window)")
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
    if args.init_from and features:
        raise SystemExit("--init-from makes a token-level draft: use it with --head tokens")
    default_layers = "-1" if features else "0"
    if args.init_from and args.layers is None:
        default_layers = ""  # every donor layer, filled in once the donor is loaded
    try:
        layers = tuple(int(x) for x in (args.layers or default_layers).split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--layers {args.layers!r}: expected comma-separated integers such as 0,-1") from None
    donor = None
    if args.init_from:
        donor = load_whisper(args.init_from, device="cpu", dtype=torch.float32)
        layers = layers or tuple(range(donor.model.config.decoder_layers))
    options = TrainOptions(init_layers=layers, steps=args.steps, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, common_tokens=args.common_tokens,
                           eval_every=args.eval_every, device=args.device, features=features,
                           feature_weight=args.feature_weight, state_dropout=args.state_dropout)
    target = load_whisper(args.target, device=args.device, dtype=torch.float32)
    labelers = [TargetLabeler(target, args.cache_dir, language=args.language, timestamps=timestamps)
                for timestamps in ((False, True) if args.with_timestamps else (False,))]
    train_files = [f for folder in args.audio for f in audio_files(folder)]
    held_files = [f for folder in args.held_out for f in audio_files(folder)]
    from tqdm import tqdm

    train, held_out = [], []
    for labeler in labelers:
        mode = "timestamps" if labeler.timestamps else "text"

        def progress(batches, mode=mode):
            return tqdm(batches, desc=f"labelling ({mode})", unit="batch")

        windows = labeler.examples(train_files, pack_seconds=args.pack_seconds, progress=progress)
        if held_files:
            held_out += labeler.examples(held_files, pack_seconds=args.pack_seconds, progress=progress)
            train += windows
        else:  # every 10th window is held out
            held_out += windows[::10]
            train += [e for i, e in enumerate(windows) if i % 10]
    print(f"{len(train)} training windows ({sum(len(e.generated) for e in train)} tokens), "
          f"{len(held_out)} held-out windows")
    start = None
    if donor is not None:
        start = _donor_start(args, target, donor, layers, train, train_files)
    result = train_draft(target, train, held_out, args.output, options, resume=not args.no_resume, start=start)
    size = result.path.stat().st_size / 2**20
    print(f"draft: {result.path} ({size:.1f} MiB) after {result.steps} steps")
    for name, score in (("untrained", result.initial), ("distilled", result.final)):
        print(f"  {name:9s} held-out acceptance {score.acceptance_rate:.3f}, mean accepted length "
              f"{score.mean_accepted_length:.2f} (k={options.draft_length}), agreement {score.agreement:.3f}")
    print(f"use it: whisper-spec transcribe --target {args.target} --draft {result.path} FILE")
    return 0


def _donor_start(args, target, donor, layers, train, train_files):
    """The untrained donor draft: the donor's layers, with the encoder map fitted on training windows."""
    from whisper_spec.distill.donor import DonorDecoder, fit_encoder_map

    groups = pack_clips(train_files, args.pack_seconds)
    if not args.held_out:  # the split above holds out every 10th window: fit on the others only
        groups = [g for i, g in enumerate(groups) if i % 10]
    chosen = groups[:: max(1, len(groups) // max(1, args.encoder_fit_windows))][: args.encoder_fit_windows]
    print(f"fitting the adapter from {args.target}'s encoder outputs to {args.init_from}'s on {len(chosen)} windows")
    encoder_map = fit_encoder_map(target, donor, [join_clips([samples for _, samples in g]) for g in chosen],
                                  hidden=args.adapter_hidden)
    vocab_ids = build_vocabulary(train, target.tokenizer, target.model.model.decoder.embed_tokens.weight.shape[0],
                                 args.common_tokens)
    return DonorDecoder.from_donor(donor, layers, vocab_ids, target, encoder_map, args.init_from)
