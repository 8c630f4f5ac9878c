"""``WhisperModel``: a target and its draft, loaded once, transcribing any number of inputs; and
``transcribe()``, its one-call form (load, transcribe one input, done).

As with faster-whisper's ``WhisperModel``, the user owns the loaded model: the CLI, the demo, the
evaluation, the server and the cluster runner each hold one. What its draft-length policies learn (this
pair's costs on this machine, per decoding mode) lives in the object, so a call's speed depends only on
the calls made through the same object, never on a hidden cache. Weights loaded once in a process are
shared by the models built on them (they are read-only).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, replace
from os import PathLike
from typing import Literal, overload

import numpy as np
import torch

from whisper_spec.audio import SAMPLE_RATE, AudioLoadError, load_audio
from whisper_spec.compute_types import resolve_compute_type
from whisper_spec.draft_specs import resolve_draft
from whisper_spec.memory import reuse_freed_memory
from whisper_spec.presets import DEFAULT, resolve_models
from whisper_spec.transcription import SegmentStream, TranscribeOptions, Transcription
from whisper_spec.whisper.checkpoints import WhisperCheckpoint, load_whisper
from whisper_spec.whisper.engine import SpeculativeWhisper
from whisper_spec.whisper.longform import FileQueue, FileRequest, LongformResult, Segment, decode_files

Audio = str | PathLike | np.ndarray  # a path to anything soundfile or ffmpeg reads, or 16 kHz mono samples


@dataclass(frozen=True)
class FileProgress:
    """What one batched step did for one of the files ``WhisperModel.transcribe_files`` decodes."""

    key: Hashable  # the caller's name for the file
    segments: tuple[Segment, ...]  # segments completed by this step
    seconds_done: float  # audio seconds of the file transcribed so far
    transcription: Transcription | None  # the whole result, once the file is finished


class WhisperModel:
    """A target Whisper with an optional draft; ``draft=None`` is the target alone (the baseline)."""

    def __init__(self, target: str | None = None, draft: str | None = DEFAULT, *, preset: str | None = None,
                 device: str = "cpu", compute_type: str = "default", dtype: torch.dtype | None = None,
                 cuda_graphs: bool = False):
        """Load the target and the draft.

        Args:
            target: the model whose output you get: a bundled name (``base``, ``tiny.en``), a local
                transformers or CTranslate2 folder, or a hub id (default: the preset's, offline ``base``).
            draft: a draft spec (see ``whisper_spec.draft_specs.resolve_draft``); ``DEFAULT`` takes the
                preset's; ``None`` runs the target alone.
            preset: a named target/draft pair from ``whisper_spec.presets.PRESETS``.
            device: where to run.
            compute_type: the precision, named as faster-whisper names it: ``"default"`` (float16 on CUDA,
                float32 elsewhere), ``"float32"``, ``"bfloat16"``, ``"float16"`` (CUDA only), ``"int8"``
                (CPU: every linear map of the target on int8 weights) or ``"int8_encoder"`` (CPU: its encoder
                on int8 weights, its decoder float32); see ``whisper_spec.compute_types``. Speculative output
                equals the same compute type's greedy output.
            dtype: a torch dtype instead of ``compute_type``, for callers not yet moved to it.
            cuda_graphs: on CUDA, decoding steps of up to 16 tokens run as fixed-shape steps replayed as
                CUDA graphs (``CachedWhisperDecoder``'s ``static_steps``); ignored elsewhere.
        """
        self.target, self.draft = resolve_models(preset, target, draft)
        self.device = device
        if torch.device(device).type == "cpu":
            reuse_freed_memory()  # a window's activations would otherwise fault in fresh pages every pass
        self.compute_type = resolve_compute_type(compute_type, device)
        self.dtype = dtype or self.compute_type.dtype
        self.static_steps = cuda_graphs and torch.device(device).type == "cuda"
        checkpoint = load_whisper(self.target, device=device, dtype=self.dtype,
                                  int8=self.compute_type.int8 and dtype is None)
        self.engine = SpeculativeWhisper(checkpoint, static_steps=self.static_steps,
                                         int8_decoder=self.compute_type.int8_decoder and dtype is None)
        if self.draft is not None:
            self.engine = self.engine.with_draft(self._draft(self.draft))

    def _draft(self, spec: str):
        return resolve_draft(spec, self.checkpoint, self.device, self.dtype, static_steps=self.static_steps)

    @property
    def checkpoint(self) -> WhisperCheckpoint:
        """The loaded target (model, tokenizer, feature extractor, generation config, tokens)."""
        return self.engine.target

    def with_draft(self, draft: str | None) -> WhisperModel:
        """The same loaded target with another draft (``None``: the target alone), learning afresh."""
        other = WhisperModel.__new__(WhisperModel)
        other.__dict__.update(self.__dict__)
        other.draft = draft
        other.engine = self.engine.with_draft(self._draft(draft) if draft is not None else None)
        return other

    @overload
    def transcribe(self, audio: Audio, options: TranscribeOptions | None = None, *,
                   stream: Literal[False] = False, **overrides) -> Transcription: ...

    @overload
    def transcribe(self, audio: Audio, options: TranscribeOptions | None = None, *,
                   stream: Literal[True], **overrides) -> SegmentStream: ...

    def transcribe(self, audio: Audio, options: TranscribeOptions | None = None, *, stream: bool = False,
                   **overrides) -> Transcription | SegmentStream:
        """Transcribe a file (or 16 kHz mono samples) of any length with speculative decoding.

        Audio longer than 30 s goes through Whisper's sequential window algorithm (see
        ``whisper.longform``); the segments and text are the same with a draft as without one.

        Args:
            audio: a path to anything soundfile or ffmpeg reads, or a float array of 16 kHz mono samples.
            options: decoding options; keyword ``overrides`` replace single fields (``language="en"``).
            stream: return a ``SegmentStream`` that yields segments as they are decoded, instead of waiting.

        Raises:
            AudioLoadError: the file is missing, empty or not audio (the message names the file and why).
        """
        started = time.perf_counter()
        options = replace(options or TranscribeOptions(), **overrides)
        if isinstance(audio, np.ndarray):
            samples, source = audio.astype(np.float32), "<array>"
        else:
            samples, source = load_audio(audio), str(audio)
        if samples.size == 0:
            raise AudioLoadError(source, "no audio samples")
        longform = options.longform_options(samples.size / SAMPLE_RATE)

        def finish(result: LongformResult) -> Transcription:
            return Transcription.from_longform(result, self.target, self.draft, time.perf_counter() - started)

        segments = SegmentStream(decode_files(self.engine, [(source, samples)], longform), finish)
        if stream:
            return segments
        for _ in segments:
            pass
        return segments.transcription

    def transcribe_files(self, files: Iterable[tuple[Hashable, np.ndarray] | FileRequest] | FileQueue,
                         options: TranscribeOptions | None = None, *, batch_size: int = 1) -> Iterator[FileProgress]:
        """Transcribe many recordings, up to ``batch_size`` of them decoded together in one batch of rows.

        ``files`` yields (key, 16 kHz mono samples) pairs or ``FileRequest``s (which may also carry a
        language, an initial prompt and a cancellation check), and is read lazily, as rows free up; a
        ``FileQueue`` also takes files that arrive while others decode (a server's requests) and blocks
        while nothing is in flight, until it is closed. A window joins the batch between speculative
        rounds as soon as a row is free, and a finished one leaves at once. Every file is decoded with
        timestamps unless ``options.timestamps`` is False (one batch decodes in one mode); a file's
        transcript does not depend on what it was batched with. Each file's wall time counts from when
        decoding took it.
        """
        longform = (options or TranscribeOptions()).longform_options(float("inf"))
        for step in decode_files(self.engine, files, longform, batch_size):
            transcription = None
            if step.result is not None:
                transcription = Transcription.from_longform(step.result, self.target, self.draft,
                                                            step.result.elapsed_seconds)
            yield FileProgress(step.key, step.segments, step.seconds_done, transcription)


@overload
def transcribe(audio: Audio, target: str | None = None, draft: str | None = DEFAULT,
               options: TranscribeOptions | None = None, *, preset: str | None = None, device: str = "cpu",
               compute_type: str = "default", dtype: torch.dtype | None = None, cuda_graphs: bool = False,
               stream: Literal[False] = False,
               **overrides) -> Transcription: ...


@overload
def transcribe(audio: Audio, target: str | None = None, draft: str | None = DEFAULT,
               options: TranscribeOptions | None = None, *, preset: str | None = None, device: str = "cpu",
               compute_type: str = "default", dtype: torch.dtype | None = None, cuda_graphs: bool = False,
               stream: Literal[True],
               **overrides) -> SegmentStream: ...


def transcribe(audio: Audio, target: str | None = None, draft: str | None = DEFAULT,
               options: TranscribeOptions | None = None, *, preset: str | None = None, device: str = "cpu",
               compute_type: str = "default", dtype: torch.dtype | None = None, cuda_graphs: bool = False,
               stream: bool = False,
               **overrides) -> Transcription | SegmentStream:
    """Load a ``WhisperModel`` for this call and transcribe ``audio`` with it (see ``WhisperModel.transcribe``).

    Every call starts afresh: nothing the model learns (its draft-length policies) carries over to the
    next call. To transcribe many inputs, load a ``WhisperModel`` once and call its ``transcribe``. The
    result's wall time counts the decoding, not the loading.

    Raises:
        AudioLoadError: the file is missing, empty or not audio (before any model is loaded).
    """
    if not isinstance(audio, np.ndarray):
        audio = load_audio(audio)  # a bad file fails before any model is loaded
    model = WhisperModel(target, draft, preset=preset, device=device, compute_type=compute_type, dtype=dtype,
                         cuda_graphs=cuda_graphs)
    return model.transcribe(audio, options, stream=stream, **overrides)
