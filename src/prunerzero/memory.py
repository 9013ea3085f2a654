"""Process memory: the peak so far, and handing freed heap memory back to the operating system."""
from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from functools import lru_cache


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Reading and tokenizing the calibration and test texts parses tens of megabytes of JSON and
    token lists; glibc keeps the freed pages, so the run's resident memory stayed ~190 MB higher
    for the rest of the run (SmolLM2, general calibration text: docs/BENCHMARKS.md, "memory").
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
