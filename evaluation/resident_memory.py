"""Peak growth of a process's resident memory while some work runs, sampled by a thread.

Torch-free, so that a peer's worker process (``evaluation.faster_whisper_worker``) measures itself with
the same probe as the evaluation's own process, without loading torch beside the peer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

SAMPLE_SECONDS = 0.002  # how often the probe reads the resident set size


def return_free_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them), so that resident memory at the start
    of a call does not already include room left over from an earlier call, which would hide its growth."""
    name = ctypes.util.find_library("c")
    if name:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
        if trim is not None:
            trim(0)


def resident_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ResidentPeak:
    """``with ResidentPeak() as peak: ...`` then ``peak.bytes``: the largest growth of resident memory above
    its level at entry (after freed heap pages are returned), sampled every ``SAMPLE_SECONDS``.

    The sampling thread competes for the interpreter with the work it watches: never use it around a call
    whose time is measured."""

    def __init__(self):
        self.bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ResidentPeak:
        return_free_memory()
        self._start = resident_bytes()
        self._peak = self._start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._peak = max(self._peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.bytes = max(self._peak, resident_bytes()) - self._start
