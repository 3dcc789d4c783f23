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

:func:`reuse_freed_pages` gets that time back at about the default's peak: large tensors get the
pages of freed ones, split or moved together by ``mremap`` (``page_reuse.cpp``); memory is never
mapped beyond the live tensors' peak plus a slack (an eighth of it, at most
``PAGE_REUSE_MAX_SLACK_BYTES``), and fresh pages are needed only to reach a new peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

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


# Smaller blocks stay with glibc, whose heap serves them well. Measured in paired steps
# (eval/conv_kernel_ab.py --compare pages, docs/speed.md, session l): from 1 MB, CUT 0.95 and
# CycleGAN 0.95 of the time, from 8 MB CUT 0.99, and a lower peak from 1 MB.
PAGE_REUSE_MIN_BYTES = 1 << 20
#: the most mapped beyond the live peak (and at most an eighth of it): room for fresh pages where
#: no free block holds a request, so that a repeating step's free blocks settle instead of being
#: merged by mremap every step (a bf16 FastCUT step 0.96 of PyTorch's allocator's time with it,
#: 1.06 without; peak resident memory +15-50 MB for the CycleGAN family, +61 MB for the Swapping
#: Autoencoder's 4 GB; docs/speed.md, session q)
PAGE_REUSE_MAX_SLACK_BYTES = 64 << 20


@dataclass(frozen=True)
class PageReuseCounters:
    """What :func:`reuse_freed_pages`' allocator did since it was installed, in bytes and calls.

    Bytes: ``fresh_bytes`` mapped anew (zeroed by the kernel on first touch); ``reused_bytes``
    served from freed blocks' pages; ``grown_bytes`` fresh pages added where the free blocks merged
    into a request did not cover it; ``released_bytes`` handed back to the system. Now:
    ``mapped_bytes`` = ``live_bytes`` + ``free_bytes``; ``peak_mapped_bytes``, the most ever
    mapped, is at most ``peak_live_bytes`` plus the slack (:func:`mapped_limit`); both peaks count
    from the last :func:`release_freed_pages`. Calls: ``exact`` (a free block of the size),
    ``split`` (the head of a larger one), ``merged`` (smaller ones moved together), ``fresh``."""

    fresh_bytes: int
    reused_bytes: int
    grown_bytes: int
    released_bytes: int
    mapped_bytes: int
    free_bytes: int
    peak_mapped_bytes: int
    live_bytes: int
    peak_live_bytes: int
    fresh_calls: int
    exact_calls: int
    split_calls: int
    merged_calls: int

    @property
    def reused_fraction(self) -> float:
        """The share of the bytes handed out whose pages were already resident."""
        total = self.reused_bytes + self.fresh_bytes + self.grown_bytes
        return self.reused_bytes / total if total else 0.0


@functools.cache
def _page_reuse_library() -> ctypes.CDLL | None:
    from gan_style.nn import native

    # checked here too: compile_library caches its result per process, GAN_STYLE_NATIVE included
    if platform.system() != "Linux" or not native.enabled():
        return None
    library = native.compile_library("page_reuse", Path(__file__).with_name("page_reuse.cpp").read_text(), language="c++")
    if library is not None:
        library.gs_page_reuse_install.argtypes, library.gs_page_reuse_install.restype = [ctypes.c_size_t, ctypes.c_size_t], ctypes.c_int
        library.gs_page_reuse_release.argtypes, library.gs_page_reuse_release.restype = [], ctypes.c_size_t
        library.gs_page_reuse_set_min_bytes.argtypes, library.gs_page_reuse_set_min_bytes.restype = [ctypes.c_size_t], None
        library.gs_page_reuse_set_max_slack.argtypes, library.gs_page_reuse_set_max_slack.restype = [ctypes.c_size_t], None
        library.gs_page_reuse_mapped_limit.argtypes, library.gs_page_reuse_mapped_limit.restype = [ctypes.c_size_t], ctypes.c_size_t
        library.gs_page_reuse_counters.argtypes = [ctypes.POINTER(ctypes.c_size_t)]
        library.gs_page_reuse_counters.restype = ctypes.c_int
    return library


_installed = False


def reuse_freed_pages(min_bytes: int = PAGE_REUSE_MIN_BYTES, max_slack_bytes: int = PAGE_REUSE_MAX_SLACK_BYTES) -> bool:
    """Make PyTorch's CPU allocator serve blocks of ``min_bytes`` or more from the pages of freed
    ones (``page_reuse.cpp``), mapping at most ``max_slack_bytes`` beyond the live peak, for the
    rest of the process: tensors allocated from then on keep it as their allocator. Idempotent (the
    first call's settings hold). False, logged, where it cannot be built (not Linux, no C++
    compiler, ``GAN_STYLE_NATIVE=0``) or installed."""
    global _installed
    if _installed:
        return True
    library = _page_reuse_library()
    if library is None:
        return False
    status = library.gs_page_reuse_install(min_bytes, max_slack_bytes)
    if status != 1:
        log.warning("reusing freed pages: PyTorch's CPU allocator is %s; it stays",
                    "another's of higher priority" if status == 0 else "one that cannot free raw pointers")
        return False
    _installed = True
    log.info("CPU tensors of %d bytes or more reuse freed pages", min_bytes)
    return True


def set_page_reuse_min_bytes(min_bytes: int | None) -> None:
    """From now on, :func:`reuse_freed_pages`' allocator serves blocks of ``min_bytes`` or more;
    None: none, every block goes to PyTorch's allocator again (its free blocks are kept). For
    comparing the two within one process (``eval/conv_kernel_ab.py --compare pages``)."""
    if _installed:
        _page_reuse_library().gs_page_reuse_set_min_bytes(2**64 - 1 if min_bytes is None else min_bytes)


def set_page_reuse_max_slack(max_slack_bytes: int) -> None:
    """From now on, :func:`reuse_freed_pages`' allocator maps at most ``max_slack_bytes`` (and an
    eighth of the live peak) beyond the live peak; free blocks over the new limit are handed back.
    0: none, and free blocks are merged for any request that none of them holds, as long as there
    are free blocks (what it did before session q; tests)."""
    if _installed:
        _page_reuse_library().gs_page_reuse_set_max_slack(max_slack_bytes)


def mapped_limit(peak_live_bytes: int) -> int:
    """The most :func:`reuse_freed_pages`' allocator maps, with its current slack, while the most
    ever live is ``peak_live_bytes`` (the allocator's own rule; ``peak_live_bytes`` where it is not installed)."""
    return int(_page_reuse_library().gs_page_reuse_mapped_limit(peak_live_bytes)) if _installed else peak_live_bytes


def page_reuse_counters() -> PageReuseCounters | None:
    """The counters of :func:`reuse_freed_pages`' allocator, or None where it is not installed."""
    if not _installed:
        return None
    values = (ctypes.c_size_t * len(PageReuseCounters.__dataclass_fields__))()
    _page_reuse_library().gs_page_reuse_counters(values)
    return PageReuseCounters(*values)


def release_freed_pages() -> int:
    """Hand the freed blocks that :func:`reuse_freed_pages` keeps back to the system (at the end
    of training, so that an idle process does not hold its step's peak); the bytes released. The
    peaks start again from what is live: a later run's slack is sized by its own peak."""
    return int(_page_reuse_library().gs_page_reuse_release()) if _installed else 0
