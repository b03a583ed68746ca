"""Process-level tuning for training and batch jobs."""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _mallopt(mmap_threshold: int, trim_threshold: int, trim: bool = False) -> bool:
    """Set glibc's mmap and trim thresholds (and ``malloc_trim(0)`` when ``trim``); False outside glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
        )
        if trim:
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return ok


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Training allocates and frees the same large (targets x catalog) logit buffers every step; by default each
    of them is a fresh mmap whose pages fault in one by one, a large share of the step time on a small CPU
    machine (figures in docs/benchmarks.md). No-op (returns False) outside glibc.
    """
    ok = _mallopt(1 << 30, 2**31 - 1)
    log.debug("glibc mallopt applied: %s", ok)
    return ok


def return_freed_memory() -> bool:
    """Undo :func:`keep_freed_memory` once training is over: large evaluation buffers go back to fresh mmaps
    and what the heap holds free is returned to the OS (``malloc_trim``), so the evaluation of a large
    catalog does not stack on top of the training peak. No-op (returns False) outside glibc."""
    return _mallopt(128 * 1024, 128 * 1024, trim=True)
