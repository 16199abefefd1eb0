"""Keep freed memory in the process, so a round's tensors do not page-fault each time.

glibc's malloc serves a large request (above its mmap threshold, which grows with the
largest block freed so far but starts at 128 KiB) with a fresh ``mmap`` and gives it back
to the kernel on ``free``; the heap's top is likewise trimmed once 128 KiB or more of it
is free. Every round then writes its output (VGG16's first coded layer: 12.8 MB) into
pages the kernel must fault in and zero, one 4 KiB page at a time: on this VM that made
placing ``features.2``'s pieces 11-13 ms per request instead of 2.2-3.0 ms (docs/master.md).
Raising both thresholds once at start-up keeps freed blocks in the heap for the next
round to reuse. Memory is not lost: it stays with the process (its RSS holds at the
run's high-water mark instead of going up and down with each request).

glibc only: elsewhere (musl, macOS) ``mallopt`` is missing and nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 2**20  # blocks up to this size come from the heap and are reused
TRIM_THRESHOLD = 2**30  # free memory at the heap's top kept up to this much


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
