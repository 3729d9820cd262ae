"""Keep glibc's malloc from handing large tensors' memory back to the kernel after every call.

By default glibc serves each allocation above its mmap threshold (128 KiB, raised dynamically up to
32 MiB) with a fresh ``mmap`` and unmaps it on free, so every training call's large activations are
page-faulted in again and zeroed by the kernel. On the tiny diffusers SD3 at 64 px (2 CPU cores) that
was 1.2-1.7 million minor page faults and about 5 s of system time per 5-epoch run; with a 1 GiB
mmap threshold and a 2 GiB trim threshold, 0.32-0.37 million and about 2 s, and epochs 14% shorter
(medians), at the same peak RSS (``docs/benchmarks.md``). PyTorch's CPU tuning guides reach the
same end by preloading jemalloc or tcmalloc; this needs no extra library.

:func:`tune_glibc_malloc` applies it to this process (``mallopt``) and, through ``GLIBC_TUNABLES``, to
the processes it starts (bench measurements, demo and study workers). It does nothing where the C
library is not glibc, when ``GLIBC_TUNABLES`` is already set (the user's choice wins), or when
``GRPO_GUARD_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_glibc_malloc"]

MMAP_THRESHOLD = 1 << 30  # allocations below 1 GiB come from the heap, which is reused
TRIM_THRESHOLD = (1 << 31) - 1  # free heap at the top is returned to the kernel only above ~2 GiB

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h


def tune_glibc_malloc(environ: dict | None = None) -> bool:
    """Apply the thresholds above to this process and its future children; True if applied here.

    ``environ`` (default ``os.environ``) receives ``GLIBC_TUNABLES`` for the children. The mmap
    threshold is set first and the trim threshold only if it was accepted: a fixed trim threshold
    alone would also freeze the mmap threshold at 128 KiB, which is far slower.
    """
    env = os.environ if environ is None else environ
    if env.get("GRPO_GUARD_MALLOC", "") == "default" or "GLIBC_TUNABLES" in env or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        if not libc.gnu_get_libc_version:  # glibc only
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False
    env["GLIBC_TUNABLES"] = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
    return True
