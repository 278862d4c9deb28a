"""Host memory for large CPU reconstruction outputs: reuse what the consumer has dropped.

Writing a newly allocated tensor costs a page fault per 4 KiB page on first touch (the kernel
also zeroes the page). On virtual machines a fault can cost more than decoding the weights in
it: measured 2.2-4 GB/s for ``torch.empty`` + ``fill_`` against 25-34 GB/s into mapped pages,
while the decoder writes ~4 GB/s (docs/benchmarks.md). Tensors above glibc's mmap threshold (it
grows up to 32 MiB) get fresh pages every time, so a server that streams model after model out
would pay that for every tensor of every request.

:class:`OutputRecycler` hands out large outputs on private anonymous mappings and hands a
mapping out again once nothing references it any more: already faulted in, no fault at all.

Transparent huge pages (``MADV_HUGEPAGE``) were measured too and are not used: a huge-page fault
was 5-10x faster when the kernel had recently freed huge pages, but 4x *slower* than ordinary pages
(0.5-0.7 GB/s) on this VM once its balloon had reported the free 2 MiB blocks to the host.

Tensors made here are ordinary CPU tensors over a Python ``mmap`` (``torch.frombuffer``): any
view, copy or numpy array works; their storage cannot be resized (``resize_``).
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import threading
import weakref

import torch
from torch import Tensor

__all__ = ["MIN_BYTES", "OutputRecycler"]

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
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _new_mapping(nbytes: int) -> mmap.mmap:
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)


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
        if _HAVE_MAP:  # references to a tracked mapping nothing else holds, as ``_refs`` counts them
            self._maps.append(_new_mapping(mmap.PAGESIZE))
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
                if nbytes <= len(self._maps[i]) <= 2 * nbytes and self._refs(i) == self._baseline:
                    end = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
                    if end < len(self._maps[i]):  # a larger tensor's pages past this one's end
                        self._maps[i].madvise(mmap.MADV_DONTNEED, end, len(self._maps[i]) - end)
                    self.reused += 1
                    return torch.frombuffer(self._maps[i], dtype=dtype, count=count).view(shape)
            buf = _new_mapping(nbytes)
            if self.max_bytes is None or nbytes <= self.max_bytes:
                self._maps.append(buf)
                # Beyond the bounds, forget the oldest mapping still in use (its tensors keep it
                # alive; forgetting it costs nothing now), else the oldest free one (unmapped).
                while len(self._maps) > self.keep or (
                    self.max_bytes is not None and sum(map(len, self._maps)) > self.max_bytes
                ):
                    busy = [i for i in range(len(self._maps)) if self._refs(i) != self._baseline]
                    del self._maps[busy[0] if busy else 0]
            return torch.frombuffer(buf, dtype=dtype, count=count).view(shape)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the mappings tracked for reuse (in use or not)."""
        with self._lock:
            return sum(map(len, self._maps))
