"""Resident memory: unmapping the pages of memory-mapped weights that nothing reads any more.

A checkpoint's weights are memory-mapped from its safetensors file (``whisper.checkpoints``), so they cost
resident memory only where they are read. Some are read once and then live on in another form (a linear
map's oneDNN-packed or int8 copy, a draft's gathered rows): their pages can leave the process. They stay
in the kernel's page cache, so a later read (word alignment, a layer-subset draft) maps them again from
there without touching the disk.
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

__all__ = ["release_pages", "trim_heap"]

_MADV_DONTNEED = 4


@functools.cache
def _madvise():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


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
    if not sys.platform.startswith("linux"):
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
            _madvise()(start, end - start, _MADV_DONTNEED)


def trim_heap() -> None:
    """Return the heap's free memory to the kernel (glibc ``malloc_trim``): loading builds and frees large
    temporaries (fused and packed weights) that the allocator would otherwise keep resident. A no-op
    elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library (musl): nothing to trim
            pass
