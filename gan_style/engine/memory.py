"""Giving the C allocator's free memory back to the system between optimisation phases.

PyTorch's CPU tensors come from the C allocator (glibc's malloc on Linux). When a phase ends its
activations are freed, but glibc keeps much of that memory in its heap for reuse (its mmap
threshold grows with the largest block freed, so large tensors soon come from the heap too). When
the next phase's tensors do not fit the holes left, the heap grows again: a step's peak resident
memory becomes more than its live tensors. ``malloc_trim(0)`` hands the whole free pages back to
the system, at the cost of page faults when they are used again: worth it where phases leave
large holes (the Swapping Autoencoder's leave about 1 GB, its peak falls by about 0.5 GB), not for
a CycleGAN step. Elsewhere (macOS, musl) :class:`HeapTrimmer` does nothing.

The opposite choice, :func:`keep_freed_memory`, trades memory for time: glibc serves every block
over 32 MB from fresh ``mmap`` pages and unmaps it when freed, and the kernel zeroes each fresh page
on first touch. Steps with many large temporaries (the Swapping Autoencoder's 30-70 MB
activations) spend a quarter or more of their CPU time there; kept in the heap, that memory is
reused instead, at a higher peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Serve every block from glibc's heap and keep freed memory there for reuse: what
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>`` in the environment does, set from within
    the process (``mallopt``). Blocks already mapped are unaffected; it holds for the rest of the
    process. False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


class HeapTrimmer:
    """``trimmer()`` returns the allocator's free heap pages to the system (``malloc_trim(0)``);
    True when it released memory. ``free_bytes()``: the bytes the heap holds free (resident or
    already handed back: glibc counts both)."""

    def __init__(self) -> None:
        self._libc = _glibc()

    @property
    def available(self) -> bool:
        return self._libc is not None

    def free_bytes(self) -> int:
        return int(self._libc.mallinfo2().fordblks) if self._libc is not None else 0

    def __call__(self) -> bool:
        return bool(self._libc.malloc_trim(0)) if self._libc is not None else False
