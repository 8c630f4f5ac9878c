"""``whisper-spec eval``: WER, token parity, latency and speed-up of ours, transformers and faster-whisper,
on manifests of real speech (long recordings through each engine's long-form algorithm), overall, by
duration and on speech the shipped draft never saw, written as report.md, report.json and PNG plots;
optionally the timing mode (random weights of the production architectures, oracle draft)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from whisper_spec import compute_types
from whisper_spec.cli import VERBS
from whisper_spec.compute_types import COMPUTE_TYPES

LONGFORM_ALLISON = 30  # the Allison prompts the shipped draft's training held out, joined for --longform
LONGFORM_ALLISON_SECONDS = 90.0  # about how long each joined recording is
DEFAULT_ALLISON = 60  # Allison prompts in the default set: with LibriVox, about 8 of the 15 minutes on 2 CPU cores


def add_parser(subparsers) -> None:
    from evaluation.run import DEFAULT_CONFIGURATIONS

    parser = subparsers.add_parser(
        "eval", help=VERBS["eval"],
        description=__doc__)
    data = parser.add_argument_group(f"data (with none of these: --librivox and --allison {DEFAULT_ALLISON})")
    data.add_argument("--manifest", action="append", default=[], metavar="JSONL",
                      help="a manifest file (JSON lines: audio, text, optional id and language); repeatable")
    data.add_argument("--librivox", action="store_true",
                      help="add the 5 LibriVox clips of the Debian package pocketsphinx-testdata")
    data.add_argument("--allison", type=int, default=None, metavar="N",
                      help="add the first N of Allison's telephone prompts (Debian asterisk-core-sounds-en[-wav])")
    data.add_argument("--librispeech", type=int, default=None, metavar="N",
                      help="add the first N utterances of LibriSpeech test-clean from the Hugging Face hub "
                           "(needs the datasets package and a reachable hub)")
    data.add_argument("--tts-texts", default=None, metavar="TXT",
                      help="add speech synthesised with hibari-tts from each non-empty line of this text file")
    data.add_argument("--longform", action="store_true",
                      help=f"add long recordings (over 30 s, decoded by each engine's long-form algorithm): "
                           f"Allison's first {LONGFORM_ALLISON} prompts joined into recordings of about "
                           f"{LONGFORM_ALLISON_SECONDS:.0f} s, and hibari-tts reading two passages of Sense and "
                           f"Sensibility (about 70 s each; needs hibari-tts)")
    data.add_argument("--audio-dir", default=None, metavar="DIR",
                      help="folder for the audio --longform, --tts-texts and --librispeech build, kept out of the "
                           "report's folder (default: eval-audio in whisper_spec's cache, ~/.cache/whisper_spec)")
    data.add_argument("--limit", type=int, default=None, metavar="N",
                      help="keep only the first N files of all the data selected (long recordings come last)")
    parser.add_argument("--config", action="append", default=None, metavar="ENGINE:TARGET[@COMPUTE_TYPE][+DRAFT]",
                        help="a configuration to run, e.g. ours:base+tiny.en, ours:base@bfloat16+distilled, "
                             "transformers:base+base or faster-whisper:base@float32 (faster-whisper: int8 unless "
                             "named); repeatable "
                             f"(default: {' '.join(DEFAULT_CONFIGURATIONS)})")
    parser.add_argument("--out", default="eval-report",
                        help="folder for report.md, report.json and the plots (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed calls per file and configuration; the median is reported (default: %(default)s)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed warm-up call of each configuration")
    parser.add_argument("--draft-length", type=int, default=None,
                        help="the most draft tokens per round (default: each draft's own choice, 12 for distilled "
                             "drafts, else 6) and transformers' initial assistant length (default: 6)")
    parser.add_argument("--fixed-draft-length", action="store_true",
                        help="always draft --draft-length tokens (ours) instead of adapting it to acceptance")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    parser.add_argument("--compute-type", choices=("default", *COMPUTE_TYPES), default="default",
                        help=f"where a configuration names none, ours' and transformers' {compute_types.HELP}; "
                             "transformers runs neither int8 type, faster-whisper not int8_encoder; also the "
                             "timing mode's")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, and faster-whisper's cpu_threads (default: torch's choice)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="ours on a CUDA device: replay decoding steps as CUDA graphs (ignored on a CPU)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the untimed extra call per file and configuration that measures peak memory")
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    timing = parser.add_argument_group("timing mode: random weights of the real architectures, oracle draft")
    timing.add_argument("--timing", action="store_true",
                        help="also run the timing mode and add its table and chart to the report")
    timing.add_argument("--timing-only", action="store_true",
                        help="run only the timing mode (no speech, no manifests)")
    timing.add_argument("--timing-architecture", default="large-v3",
                        help="shapes to build: large-v3 (with distil-large-v3 as draft) or tiny (for tests)")
    timing.add_argument("--timing-probabilities", default="0.5,0.6,0.7,0.8,0.9,0.95",
                        help="comma-separated chances that each oracle draft token is right (default: %(default)s)")
    timing.add_argument("--timing-tokens", type=int, default=128,
                        help="tokens decoded per window (default: %(default)s)")
    timing.add_argument("--timing-batch", type=int, default=1, help="windows decoded together (default: %(default)s)")
    timing.add_argument("--timing-repeats", type=int, default=3,
                        help="timed decodes per point, median kept (default: %(default)s)")
    timing.add_argument("--timing-static-steps", choices=("auto", "on", "off"), default="auto",
                        help="run our decoders on fixed-shape steps, replayed as CUDA graphs on a GPU (auto: on for "
                             "CUDA, where the plain path is also timed for comparison; on a CPU they run eagerly)")
    timing.add_argument("--timing-no-transformers", action="store_true",
                        help="skip timing transformers' greedy generate on the same batch")
    parser.set_defaults(func=run)


def _entries(args):
    from evaluation.manifests import (
        allison_manifest,
        huggingface_manifest,
        librivox_manifest,
        longform_manifest,
        read_manifest,
        tts_longform_manifest,
        tts_manifest,
    )
    from whisper_spec.whisper.checkpoints import cache_dir

    audio_dir = Path(args.audio_dir) if args.audio_dir else cache_dir() / "eval-audio"
    names, entries = [], []
    allison = args.allison
    if not (args.manifest or args.librivox or allison or args.librispeech or args.tts_texts or args.longform):
        args.librivox, allison = True, DEFAULT_ALLISON
    if args.librivox:
        entries += librivox_manifest()
        names.append("LibriVox (pocketsphinx-testdata, 5 clips)")
    if allison:
        chosen = allison_manifest(limit=allison)
        entries += chosen
        names.append(f"Allison prompts (asterisk-core-sounds-en, first {len(chosen)})")
    if args.librispeech:
        entries += huggingface_manifest(out_dir=audio_dir / "librispeech", limit=args.librispeech)
        names.append(f"LibriSpeech test-clean (first {args.librispeech})")
    if args.tts_texts:
        texts = [line.strip() for line in Path(args.tts_texts).read_text(encoding="utf-8").splitlines() if line.strip()]
        entries += tts_manifest(texts, audio_dir / "tts")
        names.append(f"hibari-tts speech of {args.tts_texts} ({len(texts)} lines)")
    for path in args.manifest:
        entries += read_manifest(path)
        names.append(str(path))
    if args.longform:
        joined = longform_manifest(allison_manifest(limit=LONGFORM_ALLISON), audio_dir / "longform" / "allison",
                                   target_seconds=LONGFORM_ALLISON_SECONDS)
        spoken = tts_longform_manifest(audio_dir / "longform" / "tts")
        entries += joined + spoken
        names.append(f"long-form: Allison's first {LONGFORM_ALLISON} prompts joined ({len(joined)} recordings), "
                     f"hibari-tts reading Sense and Sensibility ({len(spoken)} passages)")
    if args.limit is not None:
        entries = entries[: args.limit]
    return entries, names


def _timing_options(args):
    from evaluation.gpu_timing import TimingOptions
    from whisper_spec.compute_types import compute_dtype

    try:
        probabilities = tuple(float(p) for p in args.timing_probabilities.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"--timing-probabilities: expected numbers like 0.5,0.9, "
                         f"got {args.timing_probabilities!r}") from None
    return TimingOptions(
        architecture=args.timing_architecture, probabilities=probabilities, new_tokens=args.timing_tokens,
        batch_size=args.timing_batch, draft_length=args.draft_length,
        adaptive_draft_length=not args.fixed_draft_length, repeats=args.timing_repeats, device=args.device,
        dtype=compute_dtype(args.compute_type, args.device),
        static_steps={"auto": None, "on": True, "off": False}[args.timing_static_steps],
        transformers_greedy=not args.timing_no_transformers)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from evaluation.gpu_timing import plot_timing, run_timing, timing_table
    from evaluation.report import summarize, summary_table, write_report
    from evaluation.run import DEFAULT_CONFIGURATIONS, Configuration, EvalOptions, run_evaluation

    # the command line as typed, for the report (None when called from Python with another argv)
    command = "whisper-spec " + shlex.join(sys.argv[sys.argv.index("eval"):]) if "eval" in sys.argv else None
    try:
        configurations = [Configuration.parse(spec) for spec in (args.config or DEFAULT_CONFIGURATIONS)]
        options = EvalOptions(
            draft_length=args.draft_length, adaptive_draft_length=not args.fixed_draft_length, repeats=args.repeats,
            warmup=not args.no_warmup, device=args.device, compute_type=args.compute_type, threads=args.threads,
            measure_memory=not args.no_memory, cuda_graphs=args.cuda_graphs)
        for configuration in configurations:  # an unknown compute type, or float16 off CUDA, stops here
            configuration.resolved_compute_type(options)
        timing_options = _timing_options(args) if (args.timing or args.timing_only) else None
    except ValueError as error:
        print(f"whisper-spec eval: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    timing = None
    if timing_options is not None:
        steps = (1 + len(timing_options.probabilities) + int(timing_options.transformers_greedy)
                 + int(timing_options.uses_static_steps))
        with tqdm(total=steps, desc="timing mode", disable=args.no_progress) as bar:
            timing = run_timing(timing_options, on_step=lambda label: (bar.set_postfix_str(label), bar.update()))
        print(timing_table(timing))
        if args.timing_only:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            print(f"chart: {plot_timing(timing, Path(args.out) / 'timing_speedup_vs_acceptance.png')}")
            return 0

    from evaluation.manifests import DatasetUnavailableError

    try:
        entries, names = _entries(args)
    except DatasetUnavailableError as error:
        print(f"whisper-spec eval: {error}", file=sys.stderr)
        return 2
    steps = len(configurations) * (len(entries) * options.repeats + int(options.warmup))
    with tqdm(total=steps, desc="eval", unit="decode", disable=args.no_progress) as bar:
        def step(label: str) -> None:
            bar.set_postfix_str(label[:60])
            bar.update()

        result = run_evaluation(entries, configurations, options, manifest_names=names, on_step=step)
    paths = write_report(result, args.out, command=command, timing=timing)
    report = summarize(result)
    print(summary_table(report))
    print(report.fastest_note)
    print(f"report: {paths['markdown']} (and report.json, plots) in {args.out}")
    return 0
