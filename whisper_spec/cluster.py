"""Transcribe corpora beyond one machine on Ray Data (``pip install -e '.[cluster]'``).

``transcribe_dataset`` maps a Ray Dataset of audio paths (or of audio bytes, as
``ray.data.read_binary_files(..., include_paths=True)`` gives them) through a pool of actors, each of
which loads one ``WhisperModel`` and decodes its batches with batched speculation. Outputs are the local
CLI's files under the local CLI's names (``whisper_spec.jobs``), written atomically, so the output folder
may be shared storage that several machines write into; a file whose outputs all exist is skipped, so a
job rerun after a crash finishes what is missing. A bad file becomes a row saying why, never a failed job;
an actor that dies is restarted by Ray and its batch retried.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import ray
import torch

from whisper_spec.audio import AudioLoadError, load_audio
from whisper_spec.model import WhisperModel
from whisper_spec.output_formats import FORMATS, output_paths, write_outputs
from whisper_spec.presets import DEFAULT
from whisper_spec.transcription import TranscribeOptions

# Test hook: an actor that finds this variable set (to a marker path not yet there) creates the marker and
# exits at its first batch, so a test sees Ray restart a dead worker and still finish the job.
EXIT_ONCE_ENV = "WHISPER_SPEC_CLUSTER_EXIT_ONCE"
RESULT_COLUMNS = ("path", "text", "language", "audio_seconds", "status", "reason",
                  "tokens", "drafted", "accepted", "target_calls")


class _Transcriber:
    """One Ray actor: a model loaded once, transcribing the batches Ray Data hands it."""

    def __init__(self, target: str | None, draft: str | None, options: TranscribeOptions, formats: Sequence[str],
                 threads: int, batch_size: int, device: str, output_dir: str | None, overwrite: bool):
        torch.set_num_threads(threads)
        self.model = WhisperModel(target, draft, device=device)
        self.options, self.formats, self.batch_size = options, list(formats), batch_size
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.overwrite = overwrite

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """``batch``: columns ``path`` (n,), optional ``stem`` (n,) and ``bytes`` (n,); one result row per file."""
        _exit_once()
        paths = [str(p) for p in batch["path"]]
        stems = [str(s) for s in batch["stem"]] if "stem" in batch else [None] * len(paths)
        data = batch["bytes"] if "bytes" in batch else [None] * len(paths)
        rows: dict[str, dict] = {}
        todo: list[tuple[str, np.ndarray]] = []
        targets: dict[str, Path | None] = {}
        for path, stem, blob in zip(paths, stems, data, strict=True):
            targets[path] = self._stem(path, stem)
            if targets[path] is not None and not self.overwrite and all(
                    p.exists() for p in output_paths(targets[path], self.formats)):
                rows[path] = _row(path, "skipped", reason="its outputs already exist")
                continue
            try:
                todo.append((path, _samples(path, blob)))
            except AudioLoadError as error:
                rows[path] = _row(path, "failed", reason=error.reason)
        for step in self.model.transcribe_files(todo, self.options, batch_size=self.batch_size):
            result = step.transcription
            if result is None:
                continue
            if targets[step.key] is not None:
                write_outputs(result, targets[step.key], self.formats)
            rows[step.key] = _row(step.key, "ok", result.text, result.language, result.audio_seconds,
                                  result.stats.tokens, result.stats.drafted, result.stats.accepted,
                                  result.stats.target_calls)
        return {column: [rows[p][column] for p in paths] for column in RESULT_COLUMNS}

    def _stem(self, path: str, stem: str | None) -> Path | None:
        if stem is not None:
            return Path(stem)
        return self.output_dir / Path(path).stem if self.output_dir is not None else None


def transcribe_dataset(dataset: ray.data.Dataset, output_dir: str | os.PathLike | None = None, *,
                       target: str | None = None, draft: str | None = DEFAULT,
                       options: TranscribeOptions | None = None, formats: Sequence[str] = FORMATS,
                       workers: int = 1, threads_per_worker: int = 1, batch_size: int = 1, device: str = "cpu",
                       overwrite: bool = False, max_restarts: int = 3,
                       ray_remote_args: dict | None = None) -> ray.data.Dataset:
    """Transcribe every file of ``dataset`` on ``workers`` Ray actors; a lazy Dataset of one result per file.

    Args:
        dataset: rows with a ``path`` column (audio files every worker can read), or ``path`` and ``bytes``
            (``read_binary_files(..., include_paths=True)``); an optional ``stem`` column names each file's
            outputs (``stem.txt``...; the CLI passes its own names), else ``output_dir / <file stem>``.
        output_dir: where the outputs go (shared storage for a cluster); ``None`` writes nothing.
        target, draft, options: as for ``WhisperModel`` and ``WhisperModel.transcribe_files``.
        formats: output formats, any of ``whisper_spec.output_formats.FORMATS``.
        workers, threads_per_worker: actors, and the CPUs (torch threads) each one takes.
        batch_size: files one actor decodes together (also the rows Ray hands it per call).
        overwrite: transcribe again files whose outputs all exist (default: skip them).
        max_restarts: how often Ray restarts a dead actor (its batch is retried on the new one).
        ray_remote_args: more arguments for the actors (``resources``, ``runtime_env``, ``num_gpus``...).

    Returns:
        rows of ``RESULT_COLUMNS``: ``status`` is ``ok``, ``failed`` (``reason`` says why) or ``skipped``.
    """
    output_paths(Path("x"), formats)  # an unknown format fails here, before any actor starts
    if batch_size < 1 or workers < 1 or threads_per_worker < 1:
        raise ValueError(f"workers, threads_per_worker and batch_size must be at least 1, got "
                         f"{workers}, {threads_per_worker}, {batch_size}")
    remote = {"max_restarts": max_restarts, "max_task_retries": max_restarts, **(ray_remote_args or {})}
    return dataset.map_batches(
        _Transcriber, batch_size=batch_size, concurrency=workers, num_cpus=threads_per_worker,
        fn_constructor_args=(target, draft, options or TranscribeOptions(timestamps=True), tuple(formats),
                             threads_per_worker, batch_size, device,
                             str(output_dir) if output_dir is not None else None, overwrite),
        **remote)


def _samples(path: str, blob: bytes | None) -> np.ndarray:
    """16 kHz mono samples of a file, or of its bytes (decoded from a private copy with the same suffix)."""
    if blob is None:
        return load_audio(path)
    with tempfile.NamedTemporaryFile(suffix=Path(path).suffix) as copy:
        copy.write(bytes(blob))
        copy.flush()
        try:
            return load_audio(copy.name)
        except AudioLoadError as error:
            raise AudioLoadError(path, error.reason) from error


def _row(path: str, status: str, text: str = "", language: str = "", audio_seconds: float = 0.0,
         tokens: int = 0, drafted: int = 0, accepted: int = 0, target_calls: int = 0, reason: str = "") -> dict:
    return {"path": path, "text": text, "language": language, "audio_seconds": audio_seconds, "status": status,
            "reason": reason, "tokens": tokens, "drafted": drafted, "accepted": accepted,
            "target_calls": target_calls}


def _exit_once() -> None:
    marker = os.environ.get(EXIT_ONCE_ENV)
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
