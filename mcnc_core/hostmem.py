"""Host memory for large CPU reconstruction outputs: reuse what the consumer has dropped.

Writing a newly allocated tensor costs a page fault per 4 KiB page on first touch (the kernel
also zeroes the page). On virtual machines a fault can cost more than decoding the weights in
it: measured 2.2-4 GB/s for ``torch.empty`` + ``fill_`` against 25-34 GB/s into mapped pages,
while the decoder writes ~4 GB/s (docs/benchmarks.md). Tensors above glibc's mmap threshold (it
grows up to 32 MiB) get fresh pages every time, so a server that streams model after model out
would pay that for every tensor of every request.

:class:`OutputRecycler` hands out large outputs on private anonymous mappings and hands a
mapping out again once nothing references it any more: already faulted in, no fault at all.

New mappings ask for transparent huge pages (``MADV_HUGEPAGE``) where that pays, and measure it:
a huge-page fault maps 2 MiB at once (a fresh 64 MiB output 34 -> 10-14 ms here), but on a VM
whose balloon has reported the free 2 MiB blocks to the host it was 4x *slower* than ordinary
pages (0.5-0.7 GB/s). So each new mapping's first huge page is populated first
(``MADV_POPULATE_WRITE``) and timed: unless it is under half the rate ordinary pages populate at
here (measured on the mappings made with them), the rest of the mapping keeps huge pages; if so, the rest gets
ordinary pages (``MADV_NOHUGEPAGE``, populated in one pass) and the next few mappings skip huge
pages before one probes again (:class:`_HugePages`). Only whole 2 MiB pages inside the tensor's
bytes are huge, so a tensor still never holds more resident memory than its own bytes (rounded
up to a 4 KiB page).

Tensors made here are ordinary CPU tensors over a Python ``mmap`` (``torch.frombuffer``): any
view, copy or numpy array works; their storage cannot be resized (``resize_``).
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import threading
import time
import weakref

import torch
from torch import Tensor

__all__ = ["MIN_BYTES", "OutputRecycler", "hugepage_stats"]

# Outputs from this size get a mapping; smaller ones come from torch's allocator, whose heap
# (below glibc's mmap threshold) usually hands back warm pages anyway.
MIN_BYTES = 4 << 20

_HAVE_MAP = hasattr(mmap, "MAP_ANONYMOUS") and hasattr(mmap, "MADV_DONTNEED")
_LIVE: weakref.WeakSet[OutputRecycler] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A child forked while another thread held a recycler's lock would wait on it forever.
    for r in list(_LIVE):
        r._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# Fault a new mapping's pages in when it is made (Linux): the kernel maps them in one pass instead
# of one trap per 4 KiB page while the decoder writes, which halved the cost of a fresh 64 MiB
# output here (37 -> 17 ms; an already-mapped one takes 3 ms, which is why mappings are recycled).
# MADV_POPULATE_WRITE (Linux 5.14+) does it on a range, so it can be timed; MAP_POPULATE where not.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux's value; Python 3.11 lacks the name
_HUGE = 2 << 20  # x86-64's transparent huge page
_HAVE_HUGE = hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MADV_NOHUGEPAGE")


class _HugePages:
    """Whether a new mapping gets huge pages, decided by how fast they are faulted in right now.

    Each probe populates one huge page and times it against the rate ordinary pages populate at
    (the median of the last mappings populated with them; until one is measured, 2 GB/s, what
    this VM's 4 KiB populate reached). A probe under half that rate turns huge pages off for the
    next ``BACKOFF`` mappings. ``MCNC_HUGEPAGES=0`` turns them off, ``=1`` skips the probe.
    """

    BACKOFF = 4
    DEFAULT_SMALL_RATE = 2e9  # bytes/s

    def __init__(self) -> None:
        mode = os.environ.get("MCNC_HUGEPAGES", "auto")
        self.enabled = _HAVE_HUGE and mode != "0"
        self.forced = mode == "1"
        self.skip = 0
        self.small_rates: list[float] = []
        self.huge_rates: list[float] = []
        self.populate_ok = True  # MADV_POPULATE_WRITE works (False: kernel < 5.14, MAP_POPULATE used)
        self.lock = threading.Lock()

    def small_rate(self) -> float:
        with self.lock:
            rates = sorted(self.small_rates[-8:])
        return rates[len(rates) // 2] if rates else self.DEFAULT_SMALL_RATE

    def record(self, rates: list[float], rate: float) -> None:
        with self.lock:
            rates.append(rate)
            del rates[:-32]

    def want(self) -> bool:
        with self.lock:
            if not self.enabled or not self.populate_ok:
                return False
            if self.skip:
                self.skip -= 1
                return False
            return True

    def slow(self) -> None:
        with self.lock:
            self.skip = self.BACKOFF


_HUGE_PAGES = _HugePages()


def _populate(buf: mmap.mmap, start: int, length: int) -> float:
    """Fault ``[start, start + length)`` in for writing; returns bytes/s (0.0 when it cannot)."""
    if length <= 0 or not _HUGE_PAGES.populate_ok:
        return 0.0
    t0 = time.perf_counter()
    try:
        buf.madvise(_MADV_POPULATE_WRITE, start, length)
    except OSError:  # EINVAL before Linux 5.14: use MAP_POPULATE on the next mappings
        _HUGE_PAGES.populate_ok = False
        return 0.0
    return length / max(time.perf_counter() - t0, 1e-9)


def _new_mapping(nbytes: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping for ``nbytes`` with its pages faulted in, and where the tensor
    starts in it (2 MiB aligned when huge pages are asked for)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if not _HUGE_PAGES.populate_ok:
        return mmap.mmap(-1, nbytes, flags=flags | _POPULATE), 0
    if nbytes < 2 * _HUGE or not _HUGE_PAGES.want():
        buf = mmap.mmap(-1, nbytes, flags=flags)
        rate = _populate(buf, 0, len(buf))
        if rate:
            _HUGE_PAGES.record(_HUGE_PAGES.small_rates, rate)
        elif not _HUGE_PAGES.populate_ok:
            buf.close()
            return mmap.mmap(-1, nbytes, flags=flags | _POPULATE), 0
        return buf, 0
    buf = mmap.mmap(-1, nbytes + _HUGE, flags=flags)  # room to start on a 2 MiB boundary
    start = _address(buf)
    off = -start % _HUGE
    huge = (nbytes // _HUGE) * _HUGE  # whole huge pages inside the tensor's bytes only
    buf.madvise(mmap.MADV_HUGEPAGE, off, huge)
    probe = _populate(buf, off, _HUGE)
    _HUGE_PAGES.record(_HUGE_PAGES.huge_rates, probe)
    # Half the ordinary rate: one 2 MiB fault is a short, noisy sample (a descheduled thread, a
    # compaction), and the case to avoid is 3-5x slower than ordinary pages, not a little.
    if not _HUGE_PAGES.forced and probe < _HUGE_PAGES.small_rate() / 2:
        _HUGE_PAGES.slow()
        buf.madvise(mmap.MADV_NOHUGEPAGE, off + _HUGE, huge - _HUGE)
    _populate(buf, off + _HUGE, nbytes - _HUGE)
    return buf, off


def _address(buf: mmap.mmap) -> int:
    view = torch.frombuffer(buf, dtype=torch.uint8, count=1)
    return view.data_ptr()


def hugepage_stats() -> dict[str, object]:
    """What the huge-page policy measured so far (benchmarks print it): populate rates in bytes/s."""
    with _HUGE_PAGES.lock:
        return {
            "enabled": _HUGE_PAGES.enabled and _HUGE_PAGES.populate_ok,
            "small_rates": list(_HUGE_PAGES.small_rates),
            "huge_probe_rates": list(_HUGE_PAGES.huge_rates),
            "backing_off": _HUGE_PAGES.skip,
        }


class OutputRecycler:
    """Large CPU tensors on anonymous mappings, each handed out again once nothing references it.

    A mapping is reused only when nothing references it: every tensor, view, numpy array or
    storage made from it holds the mapping (through the buffer protocol), so its reference count
    is back to its baseline exactly when all of them are gone. At most ``keep`` mappings are
    tracked, of at most ``max_bytes`` together (``None``: no byte bound; a larger tensor is never
    tracked), so the memory held beyond what consumers themselves keep is at most ``keep`` times
    the largest tensor, and at most ``max_bytes``. A mapping is reused for a tensor of at least
    half its size, and the pages past that tensor's end are released first (``MADV_DONTNEED``):
    a tensor never holds more resident memory than its own bytes.

    One recycler per ``iter_reconstruct`` call (the default) reuses memory within that call; a
    long-lived one (a server's, passed as ``recycler=``) also across calls. Thread-safe.

    Raises:
        ValueError: ``keep < 1`` or ``max_bytes < 0``.
    """

    def __init__(self, keep: int = 3, max_bytes: int | None = None) -> None:
        if keep < 1 or (max_bytes is not None and max_bytes < 0):
            raise ValueError(f"need keep >= 1 and max_bytes >= 0, got keep={keep}, max_bytes={max_bytes}")
        self.keep, self.max_bytes = keep, max_bytes
        self.reused = 0  # outputs handed out on a dropped output's memory
        self._lock = threading.Lock()
        _LIVE.add(self)
        self._maps: list[mmap.mmap] = []
        self._spans: list[tuple[int, int]] = []  # per mapping: (where tensors start, bytes usable)
        if _HAVE_MAP:  # references to a tracked mapping nothing else holds, as ``_refs`` counts them
            self._maps.append(mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
            self._baseline = self._refs(0)
            self._maps.clear()

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._maps[i])

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """Same contract as ``torch.empty(shape, dtype=dtype)`` (contiguous, CPU, uninitialised).

        Outputs under ``MIN_BYTES``, and all outputs where anonymous mappings do not exist, come
        from ``torch.empty``.
        """
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes < MIN_BYTES or not _HAVE_MAP:
            return torch.empty(shape, dtype=dtype)
        with self._lock:  # a mapping at its baseline can gain references only here
            for i in range(len(self._maps)):  # no loop variable bound to a mapping: it would count
                off, cap = self._spans[i]
                if nbytes <= cap <= 2 * nbytes and self._refs(i) == self._baseline:
                    end = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
                    if end < cap:  # a larger tensor's pages past this one's end
                        self._maps[i].madvise(mmap.MADV_DONTNEED, off + end, cap - end)
                    self.reused += 1
                    return torch.frombuffer(self._maps[i], dtype=dtype, count=count, offset=off).view(shape)
            buf, off = _new_mapping(nbytes)
            cap = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
            if self.max_bytes is None or nbytes <= self.max_bytes:
                self._maps.append(buf)
                self._spans.append((off, cap))
                # Beyond the bounds, forget the oldest mapping still in use (its tensors keep it
                # alive; forgetting it costs nothing now), else the oldest free one (unmapped).
                while len(self._maps) > self.keep or (
                    self.max_bytes is not None and sum(c for _, c in self._spans) > self.max_bytes
                ):
                    busy = [i for i in range(len(self._maps)) if self._refs(i) != self._baseline]
                    del self._maps[busy[0] if busy else 0], self._spans[busy[0] if busy else 0]
            return torch.frombuffer(buf, dtype=dtype, count=count, offset=off).view(shape)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the mappings tracked for reuse (in use or not; their usable bytes, not the
        address space reserved to start on a huge-page boundary, which is never touched)."""
        with self._lock:
            return sum(c for _, c in self._spans)
