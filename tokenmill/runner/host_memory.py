"""Keeping a step's activations on glibc's heap.

By default glibc serves allocations above a dynamic threshold with mmap and unmaps them when
freed, so a batched step's multi-megabyte activations are page-faulted in anew every step (some
15,000 faults in a 512-token prefill of the default model). Raising the thresholds keeps freed
activations for reuse. The weights and the KV pool are far larger and stay mmapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 512 * 2**20


def keep_activations_on_heap() -> bool:
    """True where the allocator took the settings (glibc); elsewhere nothing changes."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        logger.info("could not tune the C allocator: large activations stay mmapped")
    return ok


def return_freed_memory() -> None:
    """Gives the OS back what loading freed (float weights quantized away, dequantized file tensors):
    glibc keeps freed heap pages resident until asked, and loading frees hundreds of megabytes."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        logger.info("could not trim the C heap")
