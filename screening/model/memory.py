"""glibc malloc settings for a process that scores: keep freed activation buffers instead of
returning them to the kernel and faulting them in again on the next forward pass.

A forward pass allocates and frees the same few activation buffers (megabytes to tens of
megabytes each) batch after batch. glibc's defaults adapt the mmap threshold to the largest freed
chunk (at most 32 MiB) and trim the heap whenever more than twice that is free at its top, so the
buffers of one batch are handed back and faulted in page by page for the next. Measured on a
6-protein, 1,461-residue in-process screen with the 8M ESM-2 architecture (2 cores, AMD EPYC
guest, 2026-12-06): 5.3 million minor page faults and 79 s with glibc's defaults, 0.15 million
and 61 s with the thresholds below (bench/results/whole_process.md). Dask's nanny makes it worse
by starting workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (flows/clusters.py).

The thresholds are fixed, which also stops glibc adapting them: buffers up to 32 MiB come from
the heap, and the heap is trimmed only when more than 1 GiB lies free at its top. The process
keeps its peak activation memory, which the next batch needs again anyway.
``PLMSCREEN_MALLOC=system`` leaves glibc as it is (to measure the difference)."""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's own ceiling for its adaptive mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); a
# larger value is refused by mallopt.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

_settled = False


def keep_activation_memory() -> bool:
    """Set the thresholds above in this process (once; later calls do nothing). Returns whether
    they are in force: False off glibc, or with ``PLMSCREEN_MALLOC=system``."""
    global _settled
    if _settled:
        return True
    if os.environ.get("PLMSCREEN_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt thresholds)
        return False
    _settled = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _settled
