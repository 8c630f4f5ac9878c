"""An evaluation run: manifest entries x configurations -> one record per (file, configuration).

A configuration is a decoder of one of three kinds on a target (at a compute type) with an optional draft:

- ``ours:TARGET[@COMPUTE_TYPE][+DRAFT]``: ``WhisperModel.transcribe`` (the package's public entry point);
  without a draft it is the baseline, the target's plain greedy decoding through the same engine.
- ``transformers:TARGET[@COMPUTE_TYPE][+DRAFT]``: transformers' ``generate`` on the same checkpoint; with a
  draft, its assisted generation (see ``evaluation.peers``).
- ``faster-whisper:TARGET[@COMPUTE_TYPE]``: faster-whisper on the CTranslate2 bundle (int8 by default).

Without ``@COMPUTE_TYPE``, ours and transformers run at ``EvalOptions.compute_type``.

Files of one 30-s window are decoded as one plain window by every engine; longer files through each
engine's long-form algorithm (ours: ``WhisperModel.transcribe``'s defaults, as users run it), so that
their token ids, timestamps included, are still compared with the baseline's. A peer that cannot decode
a file records it as not supported (``SkippedFile.configuration``); ours never skips one.

Timing discipline: every configuration is loaded, then warmed up on the first file, before any clock
is read; the timed calls are interleaved file by file (the order of configurations rotates from file to
file), so that a burst of load on a shared machine hits all configurations alike; with repeats, the
median time of a (file, configuration) is kept. On a GPU the clock is read after synchronising.
faster-whisper decodes in a worker process of its own and reads its own clock there (loaded beside
torch, CTranslate2 would slow ours: see ``evaluation.faster_whisper_worker``); ours and transformers
share this process and its torch.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from evaluation.manifests import ManifestEntry
from evaluation.metrics import ErrorCounts, char_errors, word_errors
from evaluation.peers import (
    FasterWhisperPeer,
    TransformersPeer,
    UnsupportedFileError,
    UnsupportedPairError,
    is_longform,
)
from evaluation.resident_memory import ResidentPeak
from whisper_spec.audio import SAMPLE_RATE, AudioLoadError, load_audio
from whisper_spec.compute_types import compute_dtype, resolve_compute_type
from whisper_spec.core.stats import synchronize
from whisper_spec.distill.checkpoint import WrongTargetError
from whisper_spec.model import WhisperModel

ENGINES = ("ours", "transformers", "faster-whisper")
# the offline pairs: the baseline, our draft kinds (the shipped distilled one first), and both transformers peers
DEFAULT_CONFIGURATIONS = (
    "ours:base",
    "ours:base+distilled",  # the shipped distilled draft (tiny.en's decoder re-wired to base's encoder)
    "ours:base@int8+distilled",  # the same at the int8 compute type, beside faster-whisper's int8
    "ours:base@int8_encoder+distilled",  # int8 encoder, float32 decoder: faster speculation on base
    "ours:base+tiny.en",  # cross-tokenizer draft (English-only tiny.en, another vocabulary)
    "ours:base+layers:0,5",  # shared encoder: base's own first and last decoder layers
    "ours:base+base",  # same tokenizer: the one pair transformers' assisted generation supports here
    "transformers:base",
    "transformers:base+base",
    "faster-whisper:base@int8",  # the CPU peer, at the compute type its users pick ...
    "faster-whisper:base@float32",  # ... and at ours
)
FASTER_WHISPER_COMPUTE_TYPE = "int8"  # faster-whisper's CPU users' choice, when a configuration names none


@dataclass(frozen=True)
class Configuration:
    engine: str  # "ours", "transformers" or "faster-whisper"
    target: str  # a name load_whisper resolves (or a CTranslate2 folder, for faster-whisper)
    draft: str | None  # a draft spec resolve_draft understands; None: the target alone
    compute_type: str | None = None  # faster-whisper's names; None: EvalOptions.compute_type (faster-whisper: int8)

    @property
    def name(self) -> str:
        return (f"{self.engine}:{self.target}" + (f"@{self.compute_type}" if self.compute_type else "")
                + (f"+{self.draft}" if self.draft else ""))

    @property
    def is_baseline(self) -> bool:
        """Ours without a draft: the reference for speed-up and token parity."""
        return self.engine == "ours" and self.draft is None

    def resolved_compute_type(self, options: EvalOptions) -> str:
        """The compute type this configuration runs at, by name ("default" resolved for the device)."""
        if self.engine == "faster-whisper":
            return self.compute_type or FASTER_WHISPER_COMPUTE_TYPE
        return resolve_compute_type(self.compute_type or options.compute_type, options.device).name

    @classmethod
    def parse(cls, spec: str) -> Configuration:
        """``ENGINE:TARGET[@COMPUTE_TYPE][+DRAFT]``, e.g. ``ours:base+layers:0,5``, ``ours:base@bfloat16+distilled``
        or ``faster-whisper:base@float32``."""
        engine, sep, models = spec.partition(":")
        if not sep or engine not in ENGINES or not models:
            raise ValueError(f"configuration {spec!r}: expected ENGINE:TARGET[@COMPUTE_TYPE][+DRAFT] with ENGINE "
                             f"one of {', '.join(ENGINES)}, e.g. ours:base+tiny.en")
        target, plus, draft = models.partition("+")
        target, at, compute_type = target.partition("@")
        if not target or (plus and not draft) or (at and not compute_type):
            raise ValueError(f"configuration {spec!r}: empty target, compute type or draft name")
        if engine == "faster-whisper" and draft:
            raise ValueError(f"configuration {spec!r}: faster-whisper runs no draft")
        return cls(engine, target, draft or None, compute_type or None)


@dataclass(frozen=True)
class EvalOptions:
    # the most draft tokens per round (ours; None: each draft's own choice) and transformers' initial
    # assistant length (None: 6)
    draft_length: int | None = None
    adaptive_draft_length: bool = True  # ours: choose k from measured acceptance and costs
    repeats: int = 1  # timed calls per (file, configuration); the median is kept
    warmup: bool = True  # one untimed call per configuration before timing
    device: str = "cpu"
    # ours and transformers, where a configuration names none: faster-whisper's names ("default": float16
    # on CUDA, float32 on CPU; "float32", "bfloat16", "float16", "int8"), see whisper_spec.compute_types
    compute_type: str = "default"
    threads: int | None = None  # faster-whisper's cpu_threads (None: torch's thread count)
    measure_memory: bool = True  # probe peak memory in one more, untimed call per (file, configuration)
    cuda_graphs: bool = False  # ours on CUDA: decoding steps replayed as CUDA graphs (see WhisperModel)

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.draft_length is not None and self.draft_length < 1:
            raise ValueError(f"draft_length must be at least 1, got {self.draft_length}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        compute_dtype(self.compute_type, self.device)  # an unknown or unusable compute type fails here

    @property
    def resolved_dtype(self) -> torch.dtype:
        """The torch dtype of ``compute_type`` on ``device``."""
        return compute_dtype(self.compute_type, self.device)


@dataclass(frozen=True)
class ConfigurationStatus:
    """Whether a configuration ran, and what loading it cost."""

    configuration: Configuration
    supported: bool
    reason: str | None = None  # why not, when unsupported
    compute_type: str | None = None  # the precision it ran at (Configuration.resolved_compute_type)
    load_seconds: float = 0.0
    weight_bytes: int = 0  # parameters of every distinct model it runs (a shared module counted once)


@dataclass(frozen=True)
class FileRecord:
    """One configuration on one file."""

    configuration: str  # Configuration.name
    file_id: str
    audio_seconds: float  # over one 30-s window: decoded by the long-form algorithm
    reference: str
    text: str
    tokens: tuple[int, ...]  # generated target ids (prompt and end-of-text excluded)
    seconds: float  # compute seconds, samples in -> text out (median of the repeats)
    repeat_seconds: tuple[float, ...]  # every timed call
    peak_memory_bytes: int  # see RunEnvironment.memory_measure
    target_calls: int
    draft_calls: int
    rounds: int = 0  # ours only: draft/verify rounds
    drafted: int = 0  # ours only
    accepted: int = 0  # ours only
    rescored: int = 0  # ours only: half-precision near-ties decided by a float32 rescoring
    word_errors: ErrorCounts = field(default_factory=ErrorCounts)  # after Whisper's English normaliser
    char_errors: ErrorCounts = field(default_factory=ErrorCounts)
    source: str | None = None  # ManifestEntry.source: the corpus the file came from

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


@dataclass(frozen=True)
class SkippedFile:
    """A file left out: of the whole run (unreadable, empty), or of one configuration that cannot decode it."""

    file_id: str
    reason: str
    configuration: str | None = None  # None: left out of every configuration
    audio_seconds: float = 0.0
    source: str | None = None  # ManifestEntry.source


@dataclass(frozen=True)
class RunEnvironment:
    device: str
    dtype: str
    torch_version: str
    torch_threads: int
    cpu_count: int
    platform: str
    memory_measure: str  # what peak_memory_bytes means on this device
    started_utc: str
    wall_seconds: float
    cpu: str = ""  # the CPU's model and the instruction sets the kernels choose by (see cpu_description)


@dataclass(frozen=True)
class EvalRun:
    options: EvalOptions
    environment: RunEnvironment
    statuses: tuple[ConfigurationStatus, ...]
    records: tuple[FileRecord, ...]
    skipped: tuple[SkippedFile, ...]  # of the run, then of single configurations
    manifest_names: tuple[str, ...]  # what the files came from (for the report's header)


@dataclass(frozen=True)
class _Output:
    tokens: tuple[int, ...]
    text: str
    target_calls: int
    draft_calls: int
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rescored: int = 0
    seconds: float | None = None  # the engine's own clock, where it decodes in another process


class _InProcessRunner:
    """A configuration that decodes in the evaluation's own process (ours, transformers)."""

    device: str

    def peak_memory(self, samples: np.ndarray, language: str | None) -> int:
        """Bytes: the memory one more, untimed call needs (see ``MemoryProbe``)."""
        with MemoryProbe(self.device, True) as probe:
            self(samples, language)
        return probe.peak_bytes

    def close(self) -> None:
        """Nothing to stop: the models go with the process."""


class _OursRunner(_InProcessRunner):
    def __init__(self, configuration: Configuration, options: EvalOptions, baseline: WhisperModel):
        """``baseline``: the target alone, loaded once; each configuration drafts on its weights, learning apart."""
        self.options, self.device = options, options.device
        self.model = baseline.with_draft(configuration.draft)
        engine = self.model.engine
        # a draft holds its own checkpoint (separate encoder, other tokenizer) or a decoder module (shared
        # encoder); either way its parameters are what it adds to the target's
        draft_parts = [getattr(engine.draft, "checkpoint", None), getattr(engine.draft, "decoder", None)]
        self.models = [engine.target.model] + [part.model if hasattr(part, "model") else part
                                               for part in draft_parts if part is not None]

    def __call__(self, samples: np.ndarray, language: str | None) -> _Output:
        options = self.options
        common = dict(language=language, draft_length=options.draft_length,
                      adaptive_draft_length=options.adaptive_draft_length)
        if is_longform(samples):
            # what users run on a long file: the defaults (timestamps, the previous text as prompt, the
            # no-speech and compression-ratio checks), which the peers' long-form paths are given too
            result = self.model.transcribe(samples, **common)
        else:
            # One plain greedy window, as transformers' short-form generate decodes it: without the rules
            # that drop silent windows or repetition loops, which the peers do not apply to one window.
            result = self.model.transcribe(samples, **common, timestamps=False, no_speech_threshold=None,
                                           logprob_threshold=None, compression_ratio_threshold=None)
        stats = result.stats
        return _Output(result.tokens, result.text, stats.target_calls, stats.draft_calls,
                       stats.rounds, stats.drafted, stats.accepted, stats.rescored)


class _PeerRunner(_InProcessRunner):
    def __init__(self, configuration: Configuration, options: EvalOptions):
        self.device = options.device
        compute_type = resolve_compute_type(configuration.resolved_compute_type(options), options.device)
        if compute_type.int8:
            raise UnsupportedPairError(f"{configuration.name}: transformers' Whisper has no int8 compute type")
        self.peer = TransformersPeer(configuration.target, configuration.draft, device=options.device,
                                     dtype=compute_type.dtype,
                                     draft_length=options.draft_length or 6)
        self.models = self.peer.models

    def __call__(self, samples: np.ndarray, language: str | None) -> _Output:
        out = self.peer.transcribe(samples, language)
        return _Output(out.tokens, out.text, out.target_calls, out.draft_calls)


class _FasterWhisperRunner:
    """faster-whisper in its own worker process (see ``evaluation.faster_whisper_worker``): it times its calls
    and measures its memory there."""

    def __init__(self, configuration: Configuration, options: EvalOptions):
        if configuration.resolved_compute_type(options) == "int8_encoder":
            raise UnsupportedPairError(f"{configuration.name}: int8_encoder is ours alone (faster-whisper: int8)")
        self.peer = FasterWhisperPeer(configuration.target, configuration.resolved_compute_type(options),
                                      threads=options.threads)
        self.models = []  # CTranslate2 holds its weights outside torch, in another process

    def __call__(self, samples: np.ndarray, language: str | None) -> _Output:
        out = self.peer.transcribe(samples, language)
        return _Output(out.tokens, out.text, out.target_calls, out.draft_calls, seconds=out.seconds)

    def peak_memory(self, samples: np.ndarray, language: str | None) -> int:
        return self.peer.peak_memory(samples, language)

    def close(self) -> None:
        self.peer.close()


class MemoryProbe:
    """Peak memory of the work inside ``with``: on CUDA the allocator's peak; on CPU the largest growth of
    the process's resident set above its level at entry (``evaluation.resident_memory.ResidentPeak``;
    weights already loaded are not counted: ``ConfigurationStatus.weight_bytes`` has them)."""

    def __init__(self, device: str, enabled: bool = True):
        self.cuda = torch.device(device).type == "cuda"
        self.enabled = enabled
        self.peak_bytes = 0
        self._resident: ResidentPeak | None = None

    @staticmethod
    def describe(device: str) -> str:
        if torch.device(device).type == "cuda":
            return "torch.cuda.max_memory_allocated during the call"
        return ("growth of the resident memory of the process that decodes (faster-whisper: its own worker "
                "process) during one more, untimed call (sampled every 2 ms; weights excluded)")

    def __enter__(self) -> MemoryProbe:
        if not self.enabled:
            return self
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._resident = ResidentPeak().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self.cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._resident.__exit__(*exc)
            self.peak_bytes = self._resident.bytes


def cpu_description() -> str:
    """The CPU's model name and which of the instruction sets that change our kernels' choices it has
    (AVX-512, AVX-512 VNNI and BF16, AMX): results of the same command differ from machine to machine."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    named = {"avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16", "amx_tile": "AMX"}
    present = [name for flag, name in named.items() if flag in flags]
    return f"{model} ({', '.join(present)})" if present else model


def _weight_bytes(models: Sequence[torch.nn.Module]) -> int:
    seen: dict[int, int] = {}
    for model in models:
        for parameter in model.parameters():
            seen[parameter.data_ptr()] = parameter.numel() * parameter.element_size()
    return sum(seen.values())


def run_evaluation(
    entries: Sequence[ManifestEntry],
    configurations: Sequence[Configuration],
    options: EvalOptions = EvalOptions(),
    *,
    manifest_names: Sequence[str] = (),
    on_step: Callable[[str], None] | None = None,
) -> EvalRun:
    """Run every supported configuration on every entry and record what each produced and cost.

    Args:
        entries: the files (longer than one 30-s window: decoded by each engine's long-form algorithm).
        configurations: what to compare; names must be distinct.
        options: decoding and timing options shared by all configurations.
        manifest_names: where the entries came from, for the report.
        on_step: called after every decode (warm-up included) with a short label, for a progress bar.
    """
    names = [c.name for c in configurations]
    if len(set(names)) != len(names):
        raise ValueError(f"configurations must be distinct, got {names}")
    if not entries:
        raise ValueError("no files to evaluate: the manifests are empty")
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_started = time.perf_counter()

    files, skipped = [], []
    for index, entry in enumerate(entries):
        file_id = entry.id or f"{index:05d}:{entry.audio.name}"
        try:
            samples = load_audio(entry.audio)
        except AudioLoadError as error:
            skipped.append(SkippedFile(file_id, str(error), source=entry.source))
            continue
        if samples.size == 0:
            skipped.append(SkippedFile(file_id, "no audio samples", source=entry.source))
            continue
        files.append((file_id, entry, samples))
    if not files:
        raise ValueError("no readable audio among the files; nothing to evaluate")
    compute_types = {c.name: c.resolved_compute_type(options) for c in configurations}  # a bad one fails here

    statuses, runners = [], {}
    # per (target, compute type): its weights, loaded once for every configuration of ours
    baselines: dict[tuple[str, str], WhisperModel] = {}
    for configuration in configurations:
        compute_type = compute_types[configuration.name]
        began = time.perf_counter()
        try:
            if configuration.engine == "ours":
                key = (configuration.target, compute_type)
                if key not in baselines:
                    baselines[key] = WhisperModel(configuration.target, None, device=options.device,
                                                  compute_type=compute_type, cuda_graphs=options.cuda_graphs)
                runner = _OursRunner(configuration, options, baselines[key])
            elif configuration.engine == "faster-whisper":
                runner = _FasterWhisperRunner(configuration, options)
            else:
                runner = _PeerRunner(configuration, options)
        except (UnsupportedPairError, WrongTargetError) as error:  # a pair that cannot run: reported, not faked
            statuses.append(ConfigurationStatus(configuration, False, str(error), compute_type))
            continue
        runners[configuration.name] = runner
        statuses.append(ConfigurationStatus(configuration, True, None, compute_type, time.perf_counter() - began,
                                            _weight_bytes(runner.models)))

    try:
        if options.warmup:
            file_id, entry, samples = files[0]
            for name, runner in runners.items():
                try:
                    runner(samples, entry.language)
                except UnsupportedFileError:
                    pass  # recorded when the file is timed
                if on_step:
                    on_step(f"warm-up {name}")

        order = list(runners)
        records = []
        for position, (file_id, entry, samples) in enumerate(files):
            rotated = order[position % len(order):] + order[: position % len(order)]
            for name in rotated:
                try:
                    records.append(_timed(name, runners[name], file_id, entry, samples, options, on_step))
                except UnsupportedFileError as error:
                    skipped.append(SkippedFile(file_id, str(error), name, samples.size / SAMPLE_RATE, entry.source))
    finally:
        for runner in runners.values():
            runner.close()  # an engine in a worker process of its own stops it

    environment = RunEnvironment(
        device=options.device, dtype=str(options.resolved_dtype).removeprefix("torch."),
        torch_version=torch.__version__, torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count() or 0,
        platform=platform.platform(), memory_measure=MemoryProbe.describe(options.device),
        started_utc=started_utc, wall_seconds=time.perf_counter() - run_started, cpu=cpu_description())
    ordered = sorted(records, key=lambda r: (names.index(r.configuration), r.file_id))
    return EvalRun(options, environment, tuple(statuses), tuple(ordered), tuple(skipped), tuple(manifest_names))


def _timed(name, runner, file_id, entry, samples, options: EvalOptions, on_step) -> FileRecord:
    """Median seconds of ``options.repeats`` decodes, then peak memory in one more, untimed decode: a
    sampling thread competes for the interpreter with the decoding loop, so it never runs while a clock does."""
    seconds = []
    output = None
    for _ in range(options.repeats):
        synchronize(options.device)
        start = time.perf_counter()
        output = runner(samples, entry.language)
        synchronize(options.device)
        seconds.append(output.seconds if output.seconds is not None else time.perf_counter() - start)
        if on_step:
            on_step(f"{name} {file_id}")
    peaks = [0]
    if options.measure_memory:
        peaks.append(runner.peak_memory(samples, entry.language))
    return FileRecord(
        configuration=name, file_id=file_id, audio_seconds=samples.size / SAMPLE_RATE, reference=entry.text,
        text=output.text, tokens=output.tokens, seconds=statistics.median(seconds), repeat_seconds=tuple(seconds),
        peak_memory_bytes=max(peaks), target_calls=output.target_calls, draft_calls=output.draft_calls,
        rounds=output.rounds, drafted=output.drafted, accepted=output.accepted, rescored=output.rescored,
        word_errors=word_errors(entry.text, output.text), char_errors=char_errors(entry.text, output.text),
        source=entry.source)

