"""Keep CPU training's big activation buffers in the heap instead of handing them back to the OS every step.

glibc's malloc serves blocks over its mmap threshold (at most 32 MiB) with fresh `mmap`s and unmaps them on
free, so each step's logits and their gradients (hundreds of MB for a small model with a large vocabulary)
are page-faulted and zero-filled again, step after step. Turning mmap off for malloc and raising the trim
threshold lets a training process reuse the same pages, which is what jemalloc/tcmalloc give through
LD_PRELOAD, without asking the user to install anything. The numbers do not change, only where the memory
lives; a training process's footprint is stable, so the heap does not grow without bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from dataclasses import dataclass

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
GLIBC_DEFAULT_MMAP_MAX = 65536
GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024
TRAINING_TRIM_THRESHOLD = 1 << 30


@dataclass
class HeapUsage:
    """Bytes in the main heap (brk) and in separately mmapped blocks, from glibc's `mallinfo2`."""

    heap: int
    mmapped: int


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


_switched = False
AUTO_MAX_PARAMS = 50_000_000


def wanted(setting: bool | str, n_params: int) -> bool:
    """`train.keep_heap` resolved: True/False as given; "auto" = on below `AUTO_MAX_PARAMS` parameters.

    Measured on 2 CPU cores: a 1.8M-parameter model trains 1.3x faster with the heap kept (bench/
    train_throughput.py), where a step is milliseconds and re-faulting its buffers dominates; a 190M-parameter
    model with a 262k vocabulary (bench/big_vocab.py) peaks 0.5 GB (11%) higher with it for 5% more tokens/s,
    so above the threshold the default gives the memory back.
    """
    if setting == "auto":
        return n_params < AUTO_MAX_PARAMS
    return bool(setting)


def keep_heap(enable: bool = True) -> bool:
    """Switch glibc malloc to training mode, or back to its defaults if this process switched it; False where
    there is no glibc. Process-wide: it outlives the run that set it until a run asks for `enable=False`."""
    global _switched
    libc = _libc()
    if libc is None or not (enable or _switched):
        return False
    mmap_max, trim = (0, TRAINING_TRIM_THRESHOLD) if enable else (GLIBC_DEFAULT_MMAP_MAX, GLIBC_DEFAULT_TRIM_THRESHOLD)
    ok = bool(libc.mallopt(M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim))
    _switched = enable and ok
    return ok


def heap_usage() -> HeapUsage | None:
    """Where malloc's memory is now (None where glibc's mallinfo2 is missing, glibc < 2.33)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return HeapUsage(heap=int(info.arena), mmapped=int(info.hblkhd))
