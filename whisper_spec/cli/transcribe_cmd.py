"""``whisper-spec transcribe``: transcribe files, folders and globs into txt/json/srt/vtt/tsv, never losing work.

Every output is written atomically, and a file whose outputs all exist is skipped, so a run that is
killed resumes where it stopped when started again. A file that cannot be read gets one line saying
why; the others go on, and the exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from whisper_spec import compute_types
from whisper_spec.audio import AudioLoadError, audio_duration, load_audio
from whisper_spec.cli import VERBS
from whisper_spec.compute_types import COMPUTE_TYPES
from whisper_spec.core.stats import SpeculationStats
from whisper_spec.jobs import Failure, Job, find_jobs, print_summary
from whisper_spec.model import WhisperModel
from whisper_spec.output_formats import FORMATS, output_paths, write_outputs
from whisper_spec.presets import DEFAULT, PRESETS, resolve_models
from whisper_spec.transcription import TranscribeOptions, Transcription

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}{postfix}]"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "transcribe", help=VERBS["transcribe"],
        description="Transcribe audio files of any length with speculative decoding. The transcript is the "
                    "target model's own (greedy): the draft only makes it faster. Outputs are written "
                    "atomically and finished files are skipped, so an interrupted run resumes when rerun.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files, folders (searched recursively for audio files) or quoted glob patterns")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("."),
                        help="folder for the transcripts; a folder input's subfolders are mirrored inside it")
    parser.add_argument("-f", "--formats", default=",".join(FORMATS),
                        help=f"comma-separated output formats, any of {', '.join(FORMATS)}")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a named target/draft pair (default: 'base' when no --target is given)")
    parser.add_argument("--target", help="the model whose transcript you get: bundled name, folder or hub id")
    parser.add_argument("--draft", default=DEFAULT,
                        help="the draft: a model name; layers:i,j for some of the target's own decoder "
                             "layers; a distilled draft (a .pt file from `whisper-spec distill`, or 'distilled' "
                             "for the one shipped for the target); 'default' takes the preset's")
    parser.add_argument("--no-speculative", action="store_true",
                        help="run the target alone (the baseline), everything else unchanged")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to run on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--compute-type", default="default", choices=("default", *COMPUTE_TYPES),
                        help=f"model {compute_types.HELP}")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="on a CUDA device, replay decoding steps of target and draft as CUDA graphs (large "
                             "models at small batches are launch-bound); ignored on a CPU")
    parser.add_argument("--language", help="spoken language code such as en or fr (default: detected per file)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                        help="transcribe in the spoken language, or translate into English")
    parser.add_argument("--word-timestamps", action="store_true",
                        help="also time every word (cross-attention alignment); shown in the json output")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="how many files to decode together, one 30-s window of each per step")
    parser.add_argument("--draft-length", type=int, default=None,
                        help="the most draft tokens per round (default: the draft's own choice, 12 for "
                             "distilled drafts, which end their rounds themselves, else 6)")
    parser.add_argument("--near-tie-margin", type=float,
                        help="float16/bfloat16 only: greedy choices whose top two logits are closer than this are "
                             "decided by a float32 rescoring, keeping speculative output equal to greedy output "
                             "in the same precision (default: 0.25 for float16, 1.0 for bfloat16; 0 turns it off)")
    parser.add_argument("--draft-confidence", type=float, default=None,
                        help="a draft ends its round once the probability it gives its whole proposal (the "
                             "product of its token probabilities) falls below this; --draft-length is then a "
                             "cap (default: the draft's own choice, 0.5 for distilled drafts, else 0: never)")
    parser.add_argument("--fixed-draft-length", action="store_true",
                        help="draft every round: exactly --draft-length tokens, or up to it with "
                             "--draft-confidence (default: adapt k to measured acceptance and costs, down to "
                             "plain decoding when the draft does not pay)")
    parser.add_argument("--overwrite", action="store_true",
                        help="transcribe again files whose outputs already exist (default: skip them)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="run on Ray Data (needs the 'cluster' extra): alone, a local Ray started for this "
                             "job; 'auto' or ray://host:port joins a running cluster, whose workers must all "
                             "read the inputs and write --output-dir (shared storage)")
    parser.add_argument("--workers", type=int, default=1, help="with --ray: how many model actors run at once")
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="with --ray: CPUs (torch threads) each actor takes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        output_paths(Path("x"), formats)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        target, draft = resolve_models(args.preset, args.target, args.draft)
        options = TranscribeOptions(language=args.language, task=args.task, draft_length=args.draft_length,
                                    adaptive_draft_length=not args.fixed_draft_length,
                                    draft_confidence=args.draft_confidence, timestamps=True,
                                    near_tie_margin=args.near_tie_margin,
                                    word_timestamps=args.word_timestamps)
    except ValueError as error:
        print(f"whisper-spec transcribe: {error}", file=sys.stderr)
        return 2
    if args.no_speculative:
        draft = None
    started = time.perf_counter()
    jobs, failures = find_jobs(args.inputs, args.output_dir)
    for failure in failures:
        _report(failure)
    todo, skipped = [], 0
    for job in jobs:
        if not args.overwrite and all(p.exists() for p in output_paths(job.stem, formats)):
            skipped += 1
        else:
            todo.append(job)
    if args.ray is not None:
        return _run_on_ray(args, todo, skipped, failures, target, draft, options, formats, started)
    seconds: dict[Job, float] = {}
    for job in todo:
        try:
            seconds[job] = audio_duration(job.source)
        except AudioLoadError as error:
            failures.append(_report(Failure(str(job.source), error.reason)))
    todo = [job for job in todo if job in seconds]

    done: list[Transcription] = []
    if todo:
        model = WhisperModel(target, draft, device=args.device, compute_type=args.compute_type,
                             cuda_graphs=args.cuda_graphs)
        bar = tqdm(total=sum(seconds.values()), unit="s", unit_scale=True, desc="audio", bar_format=BAR_FORMAT,
                   disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
        progress: dict[Job, float] = {}

        def loaded() -> Iterator[tuple[Job, np.ndarray]]:
            for job in todo:
                try:
                    samples = load_audio(job.source)
                except AudioLoadError as error:
                    failures.append(_report(Failure(str(job.source), error.reason), bar))
                    bar.update(seconds[job])
                    continue
                yield job, samples

        for step in model.transcribe_files(loaded(), options, batch_size=args.batch_size):
            job = step.key
            before = progress.get(job, 0.0)
            progress[job] = step.seconds_done
            if step.transcription is None:
                bar.update(min(step.seconds_done, seconds[job]) - min(before, seconds[job]))
                continue
            bar.update(max(0.0, seconds[job] - before))
            write_outputs(step.transcription, job.stem, formats)
            done.append(step.transcription)
            bar.set_postfix_str(f"files {len(done)}/{len(todo)}")
        bar.close()
    print_summary(len(done), sum(t.audio_seconds for t in done), sum((t.stats for t in done), SpeculationStats()),
                  skipped, failures, time.perf_counter() - started, args.output_dir)
    return 1 if failures else 0


def _run_on_ray(args: argparse.Namespace, todo: list[Job], skipped: int, failures: list[Failure], target: str,
                draft: str | None, options: TranscribeOptions, formats: list[str], started: float) -> int:
    """The same job on Ray Data: actors write the outputs, this process reports and sums up."""
    import ray  # only here: the default path never imports the optional extra

    started_ray = not ray.is_initialized()  # a caller already connected (a notebook, a test) keeps its Ray
    if started_ray:
        ray.init(address=None if args.ray == "local" else args.ray, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        return _ray_job(args, todo, skipped, failures, target, draft, options, formats, started)
    finally:
        if started_ray:
            ray.shutdown()


def _ray_job(args: argparse.Namespace, todo: list[Job], skipped: int, failures: list[Failure], target: str,
             draft: str | None, options: TranscribeOptions, formats: list[str], started: float) -> int:
    import ray

    from whisper_spec.cluster import transcribe_dataset

    ray.data.DataContext.get_current().enable_progress_bars = not args.no_progress
    stats, audio, done = SpeculationStats(), 0.0, 0
    if todo:
        rows = ray.data.from_items([{"path": str(job.source.absolute()), "stem": str(job.stem.absolute())}
                                    for job in todo])  # absolute: actors may run in another folder
        results = transcribe_dataset(rows, args.output_dir, target=target, draft=draft, options=options,
                                     formats=formats, workers=args.workers, threads_per_worker=args.threads_per_worker,
                                     batch_size=args.batch_size, device=args.device, overwrite=args.overwrite)
        for row in results.iter_rows():
            if row["status"] == "failed":
                failures.append(_report(Failure(row["path"], row["reason"])))
            elif row["status"] == "skipped":
                skipped += 1
            else:
                done += 1
                audio += row["audio_seconds"]
                stats += SpeculationStats(tokens=row["tokens"], drafted=row["drafted"], accepted=row["accepted"],
                                          target_calls=row["target_calls"])
    print_summary(done, audio, stats, skipped, failures, time.perf_counter() - started, args.output_dir)
    return 1 if failures else 0


def _report(failure: Failure, bar: tqdm | None = None) -> Failure:
    line = f"error: {failure.source}: {failure.reason}"
    (bar.write if bar is not None else print)(line, file=sys.stderr)
    return failure
