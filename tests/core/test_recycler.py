"""Output recycling in iter_reconstruct: reuse only memory nobody references; same values."""

from __future__ import annotations

import math

import torch

from mcnc_core import Bundle, MCNCConfig, iter_reconstruct, reconstruct
from mcnc_core.manifest import TensorEntry
from mcnc_core.reconstruct import _OutputRecycler


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
    r = _OutputRecycler()
    shape = (r.MIN_BYTES // 4 // 1024, 1024)
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
