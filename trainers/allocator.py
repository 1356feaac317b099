"""Keep glibc from handing big tensors back to the kernel between minibatches.

By default glibc serves allocations above 128 KiB-32 MiB with fresh mmap()s and unmaps them on
free, so every PPO minibatch page-faults its activations (~2.7 GB per step for the CPU recipe) back
in: about 40% of CPU time went to the kernel. Raising the mmap and trim thresholds keeps freed
memory in the heap for reuse (measured: 147 → 251 env steps/s, peak memory 1.8 → 2.2 GB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LIMIT = 2**31 - 1


def keep_freed_memory() -> bool:
    """Apply the thresholds in this process (glibc only); returns whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _LIMIT))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
