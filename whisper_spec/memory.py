"""Resident memory: unmapping the pages of memory-mapped weights that nothing reads any more, and keeping
freed memory for the next tensor instead of faulting fresh pages in.

A checkpoint's weights are memory-mapped from its safetensors file (``whisper.checkpoints``), so they cost
resident memory only where they are read. Some are read once and then live on in another form (a linear
map's oneDNN-packed or int8 copy, a draft's gathered rows): their pages can leave the process. They stay
in the kernel's page cache, so a later read (word alignment, a layer-subset draft) maps them again from
there without touching the disk.

A pass over a window allocates and frees activations of several MiB each (an encoder layer's MLP input is
1500 x 2048 float32, 12 MiB). glibc hands a freed block that large back to the kernel, and the next
tensor's memory comes back as fresh zeroed pages, each faulted in on first touch: tens of thousands of
page faults per encoder call, a fifth of its time on a 2-core machine (measurements-behind-the-defaults.md).
``reuse_freed_memory`` keeps such blocks in the process instead.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import mmap
import sys
from collections.abc import Iterable

import numpy as np
from torch import Tensor

__all__ = ["release_pages", "reuse_freed_memory", "trim_heap"]

_MADV_DONTNEED = 4
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest value glibc accepts on 64-bit systems
_NEVER_TRIM = 2**31 - 1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, or None off Linux or under another C library (musl), whose allocator is left as it is."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):  # glibc's own functions
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _file_mappings() -> list[tuple[int, int]]:
    """Sorted (start, end) of this process's private mappings of regular files (/proc/self/maps)."""
    spans = []
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and fields[1].endswith("p"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                spans.append((start, end))
    return sorted(spans)


def _unmodified(start: int, end: int) -> bool:
    """True when no page in [start, end) of a private file mapping was written (copied on write): each
    resident page is still the file's page (/proc/self/pagemap: bit 63 present, bit 61 file page)."""
    pages = (end - start) // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(start // mmap.PAGESIZE * 8)
        entries = np.frombuffer(pagemap.read(pages * 8), dtype=np.uint64)
    present, file_page = (entries >> np.uint64(63)) & np.uint64(1), (entries >> np.uint64(61)) & np.uint64(1)
    return len(entries) == pages and not np.any(present & ~file_page & np.uint64(1))


def release_pages(tensors: Iterable[Tensor]) -> None:
    """Unmap the whole pages inside these CPU tensors where they are unmodified private mappings of a file
    (a memory-mapped checkpoint); a later read maps them again from the page cache, with the same contents.
    Any other memory (a tensor that was copied, cast, moved or written to) is left as it is, as is
    everything off Linux."""
    if _glibc() is None:
        return
    spans = None
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        first = tensor.data_ptr()
        start = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (first + tensor.numel() * tensor.element_size()) // mmap.PAGESIZE * mmap.PAGESIZE
        if end <= start:
            continue
        spans = _file_mappings() if spans is None else spans
        i = bisect.bisect_right(spans, (start, float("inf"))) - 1
        if i >= 0 and spans[i][0] <= start and end <= spans[i][1] and _unmodified(start, end):
            _glibc().madvise(start, end - start, _MADV_DONTNEED)


def trim_heap() -> None:
    """Return the heap's free memory to the kernel (glibc ``malloc_trim``): loading builds and frees large
    temporaries (fused and packed weights) that the allocator would otherwise keep resident. A no-op
    elsewhere."""
    if _glibc() is not None:
        _glibc().malloc_trim(0)


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB for reuse (``mallopt``): allocations that size come from
    the heap, not from a new mapping, and the heap's free top is not handed back while the process runs
    (``trim_heap`` still does so on demand). The peak resident memory stays what the largest pass needs;
    it is not given back between passes. Both settings are needed: fixing either one alone stops glibc
    from raising the other as it goes, and was slower than neither. Returns whether both were set
    (False off glibc); once per process."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                             _NEVER_TRIM))
