"""Output recycling in iter_reconstruct: reuse only memory nobody references; same values."""

from __future__ import annotations

import ctypes
import math
import mmap
import threading
import time

import pytest
import torch

from mcnc_core import Bundle, MCNCConfig, iter_reconstruct, reconstruct
from mcnc_core.hostmem import MIN_BYTES, OutputRecycler
from mcnc_core.manifest import TensorEntry


def _bundle(shapes: list[tuple[int, int]]) -> Bundle:
    cfg = MCNCConfig()
    spec = cfg.generator_spec()
    g = torch.Generator().manual_seed(0)
    manifest, offset = [], 0
    for i, shape in enumerate(shapes):
        n = -(-math.prod(shape) // spec.chunk_size)
        manifest.append(TensorEntry(f"w{i}", shape, "F32", "mcnc", 0, offset, n))
        offset += n
    alpha = (torch.rand(offset, spec.k, generator=g) * 2 - 1) * spec.bound
    return Bundle(spec, cfg, tuple(manifest), alpha, torch.rand(offset, generator=g) + 0.1, {}, None)


def test_recycler_reuses_only_unreferenced_memory() -> None:
    r = OutputRecycler()
    shape = (MIN_BYTES // 4 // 1024, 1024)
    a = r.empty(shape)
    view = a[1:]
    del a
    b = r.empty(shape)  # a's memory is still referenced by view: fresh memory
    assert b.data_ptr() != view.data_ptr() - view.stride(0) * 4
    ptr = b.data_ptr()
    del b
    c = r.empty(shape)  # b is gone: reused
    assert c.data_ptr() == ptr
    arr = c.numpy()
    del c
    d = r.empty(shape)  # a numpy array still holds c's memory
    assert d.data_ptr() != arr.ctypes.data
    small = r.empty((10, 10))  # small tensors come from torch.empty
    assert small.shape == (10, 10)


def test_iter_reconstruct_recycled_values_equal_kept() -> None:
    b = _bundle([(3000, 3000), (2900, 3000), (3000, 3000)])  # > 32 MiB each
    kept = reconstruct(b)
    seen = 0
    for name, t in iter_reconstruct(b):  # each tensor dropped before the next
        assert torch.equal(t, kept[name])
        seen += 1
    assert seen == 3
    held = dict(iter_reconstruct(b))  # keeping them all: no aliasing between outputs
    ptrs = {t.data_ptr() for t in held.values()}
    assert len(ptrs) == 3 and all(torch.equal(held[n], kept[n]) for n in kept)


def test_a_long_lived_recycler_reuses_memory_across_calls() -> None:
    b = _bundle([(2048, 1024), (2048, 1024)])  # 8 MiB each
    rec = OutputRecycler()
    first = {n: t.clone() for n, t in iter_reconstruct(b, recycler=rec)}
    assert rec.reused == 0  # w0 is held by the loop while w1 is decoded
    again = {n: torch.equal(t, first[n]) for n, t in iter_reconstruct(b, recycler=rec)}
    assert again == {"w0": True, "w1": True} and rec.reused == 2
    assert rec.tracked_bytes <= rec.keep * 8 << 20


def test_a_smaller_tensor_on_a_larger_mapping() -> None:
    rec = OutputRecycler()
    big = rec.empty((MIN_BYTES // 1024, 1024 // 4 * 2))  # 2 x MIN_BYTES of float32
    big.fill_(7.0)
    del big
    small = rec.empty((MIN_BYTES // 1024 + 3, 1024 // 4 * 1 + 1), torch.float32)  # ~1.0x: reuses, tail released
    assert rec.reused == 1 and small.numel() * 4 > MIN_BYTES
    small.fill_(1.0)
    assert float(small.sum()) == small.numel()
    resident = _resident_bytes(small.data_ptr(), 2 * MIN_BYTES)
    if resident is not None:  # Linux: the big tensor's pages past the small one's end were released
        assert resident <= small.numel() * 4 + 4096, resident


def _resident_bytes(addr: int, length: int) -> int | None:
    """Bytes of ``[addr, addr + length)`` resident in memory (``mincore``), None where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return None
    page = mmap.PAGESIZE
    pages = -(-length // page)
    vec = (ctypes.c_ubyte * pages)()
    if mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) != 0:
        return None
    return sum(v & 1 for v in vec) * page


def test_recycler_bounds() -> None:
    shape = (MIN_BYTES // 4 // 1024, 1024)
    rec = OutputRecycler(keep=2)
    held = [rec.empty(shape) for _ in range(4)]  # all in use: fresh mappings, only two tracked
    assert len({t.data_ptr() for t in held}) == 4 and rec.tracked_bytes == 2 * MIN_BYTES
    capped = OutputRecycler(max_bytes=MIN_BYTES)
    held += [capped.empty(shape), capped.empty(shape)]
    assert capped.tracked_bytes == MIN_BYTES
    held.append(capped.empty((2 * shape[0], shape[1])))  # larger than the cap: never tracked
    assert capped.tracked_bytes == MIN_BYTES
    off = OutputRecycler(max_bytes=0)
    assert off.empty(shape).shape == shape and off.tracked_bytes == 0  # tracks nothing, still allocates
    for bad in ({"keep": 0}, {"max_bytes": -1}):
        with pytest.raises(ValueError, match="keep >= 1"):
            OutputRecycler(**bad)


def test_recycler_is_thread_safe() -> None:
    """Threads sharing one recycler never get memory another thread still uses."""
    rec = OutputRecycler(keep=4)
    shape = (MIN_BYTES // 4 // 1024, 1024)
    clobbered: list[tuple[int, float]] = []

    def work(k: int) -> None:
        for j in range(25):
            t = rec.empty(shape)
            t.fill_(k * 100 + j)
            time.sleep(0.0005)  # let the others allocate meanwhile
            if float(t[0, 0]) != k * 100 + j or float(t[-1, -1]) != k * 100 + j:
                clobbered.append((k, j))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert clobbered == []


def test_beyond_its_bounds_the_recycler_forgets_mappings_in_use_first() -> None:
    small, large = (MIN_BYTES // 4 // 1024, 1024), (3 * MIN_BYTES // 4 // 1024, 1024)
    rec = OutputRecycler(keep=2)
    free = rec.empty(large)
    del free  # the oldest mapping: warm and unreferenced (too large to serve ``small``)
    held = [rec.empty(small), rec.empty(small)]  # a third mapping: the oldest *in use* is forgotten
    assert rec.reused == 0 and rec.tracked_bytes == 4 * MIN_BYTES
    rec.empty(large)  # the free one was kept
    assert rec.reused == 1 and len(held) == 2


def test_huge_pages_fall_back_to_ordinary_pages_when_slow(monkeypatch) -> None:
    """A probe slower than half the ordinary-page rate turns huge pages off for a few mappings;
    values and bounds are the same either way."""
    from mcnc_core import hostmem

    policy = hostmem._HugePages()
    if not (policy.enabled and policy.populate_ok):
        pytest.skip("no transparent huge pages here")
    monkeypatch.setattr(hostmem, "_HUGE_PAGES", policy)
    shape = (2 * MIN_BYTES // 4 // 1024, 1024)
    a = OutputRecycler().empty(shape)
    assert a.data_ptr() % (2 << 20) == 0  # started on a huge-page boundary
    policy.small_rates[:] = [1e15]  # no probe can be that fast: this one is "slow"
    b = OutputRecycler().empty(shape)
    assert policy.skip == policy.BACKOFF
    c = OutputRecycler().empty(shape)  # skipped: ordinary pages, no probe
    assert policy.skip == policy.BACKOFF - 1 and len(policy.huge_rates) == 2
    for t in (a, b, c):
        t.fill_(3.0)
        assert float(t.sum()) == 3.0 * t.numel()
