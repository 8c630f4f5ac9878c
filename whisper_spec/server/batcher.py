"""One decoding thread for every request: continuous batching across requests.

Requests that decode in the same mode (task, timestamps, word timestamps, temperature) share one
``WhisperModel.transcribe_files`` loop fed by a ``FileQueue``: a request's windows join the running
batch between speculative rounds as soon as a row is free, and leave it as they finish, so a short
request never waits for a long one to end. Language and prompt differ per request within a batch. When
requests of another mode are waiting, the running mode takes no new requests and drains, then the
oldest waiting mode runs (no mode starves). Each request's transcript is what ``transcribe()`` gives
for it alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace

import numpy as np

from whisper_spec.model import FileProgress, WhisperModel
from whisper_spec.transcription import TranscribeOptions
from whisper_spec.whisper.longform import FileQueue, FileRequest

log = logging.getLogger("whisper_spec.server")


@dataclass(eq=False)
class Job:
    """One request in the batcher: its audio, and the queue its progress reaches the request through."""

    key: int
    samples: np.ndarray
    options: TranscribeOptions  # the batch mode (language and prompt excluded: they travel per file)
    language: str | None
    prompt: str | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # FileProgress, then None; or an Exception
    cancelled: bool = False  # the client went away: the job leaves the batch at the next round

    def deliver(self, item: FileProgress | Exception | None) -> None:
        """From the decoding thread: hand ``item`` to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass


@dataclass
class _Running:
    options: TranscribeOptions
    queue: FileQueue
    closed: bool = False


class Batcher:
    """The decoding thread and its waiting requests, grouped by decoding mode."""

    def __init__(self, model: WhisperModel, max_batch: int = 4):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.max_batch = model, max_batch
        self._lock = threading.Condition()
        self._waiting: OrderedDict[TranscribeOptions, deque[Job]] = OrderedDict()
        self._running: _Running | None = None
        self._jobs: dict[int, Job] = {}  # every job not finished yet, by key
        self._keys = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> Batcher:
        """Decode on a thread of its own (``run`` decodes on the calling thread instead)."""
        self._thread = threading.Thread(target=self.run, name="whisper-spec-decoder", daemon=True)
        self._thread.start()
        return self

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def submit(self, samples: np.ndarray, options: TranscribeOptions, language: str | None,
               prompt: str | None) -> Job:
        """Queue a request (call from the event loop); its progress arrives on ``job.events``."""
        mode = replace(options, language=None, initial_prompt=None)
        job = Job(next(self._keys), samples, mode, language, prompt, asyncio.get_running_loop())
        with self._lock:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._jobs[job.key] = job
            running = self._running
            if running is not None and not running.closed and running.options == mode:
                running.queue.put(self._request(job))  # joins the batch at its next round
            else:
                self._waiting.setdefault(mode, deque()).append(job)
                if running is not None and not running.closed:
                    running.closed = True  # another mode waits: drain this one, then switch
                    running.queue.close()
                self._lock.notify_all()
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Finish every request already submitted, then end ``run`` (and wait for its thread, if started)."""
        with self._lock:
            self._stopping = True
            if self._running is not None and not self._running.closed:
                self._running.closed = True
                self._running.queue.close()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _request(self, job: Job) -> FileRequest:
        def cancelled() -> bool:  # asked by the decoding loop between rounds
            if job.cancelled:
                self._forget(job)
            return job.cancelled

        return FileRequest(job.key, job.samples, job.language, job.prompt, cancelled=cancelled)

    def _next_mode(self) -> _Running | None:
        """The oldest waiting mode with all its waiting jobs queued, or None once stopping with nothing left."""
        with self._lock:
            while not self._waiting and not self._stopping:
                self._lock.wait()
            if not self._waiting:
                return None
            mode, jobs = self._waiting.popitem(last=False)
            queue = FileQueue()
            for job in jobs:
                queue.put(self._request(job))
            running = _Running(mode, queue)
            if self._waiting or self._stopping:  # others wait already: take no more of this mode
                running.closed = True
                queue.close()
            self._running = running
            return running

    def run(self) -> None:
        """Decode every submitted request until ``stop``. Torch's CPU kernels run measurably faster on the
        process's main thread than on another one, which is why ``serve`` decodes there."""
        while (running := self._next_mode()) is not None:
            try:
                for step in self.model.transcribe_files(running.queue, running.options, batch_size=self.max_batch):
                    job = self._jobs.get(step.key)
                    if job is None:
                        continue
                    job.deliver(step)
                    if step.transcription is not None:
                        job.deliver(None)
                        self._forget(job)
            except Exception as error:  # noqa: BLE001 - one failed batch must not take the server down
                log.exception("decoding failed")
                self._fail_running(running, error)
            with self._lock:
                self._running = None

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.key, None)

    def _fail_running(self, running: _Running, error: Exception) -> None:
        """Every job of the failed batch (in flight or still queued in it) gets the error."""
        with self._lock:
            if not running.closed:
                running.closed = True
                running.queue.close()
            waiting = {job.key for jobs in self._waiting.values() for job in jobs}
            failed = [job for key, job in self._jobs.items() if key not in waiting]
        for job in failed:
            job.deliver(error)
            self._forget(job)
