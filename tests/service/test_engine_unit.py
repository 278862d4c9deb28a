"""The weights Engine against a fake Reconstructor: no store, no device, no decode — only the stream,
its tiers and single flight."""

from __future__ import annotations

import contextlib
import threading
import time

import torch

import mcnc_core as m
from service.cache import MemoryCache
from service.config import Settings
from service.engine import Engine
from service.metrics import Metrics
from tests.service._helpers import load_st


class FakeReconstructor:
    """Yields each tensor filled with its manifest index; records every call (kind, names)."""

    profile = "fake/profile"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str] | None]] = []
        self.gate = threading.Event()
        self.gate.set()

    def check_fits(self, bundle, dtypes) -> None:
        pass

    def admit(self) -> None:
        pass

    def reconstruct(self, bundle, base, *, names=None, dtype=None, kind, verify=False):
        self.calls.append((kind, names))
        for i, e in enumerate(bundle.manifest):
            if names is None or e.name in names:
                self.gate.wait(5)
                yield e.name, torch.full(e.shape, float(i), dtype=dtype or torch.float32)


def _engine(fake: FakeReconstructor, memory_bytes: int = 0) -> Engine:
    metrics = Metrics()
    return Engine(
        Settings(), fake, lambda b: contextlib.nullcontext(None), metrics, MemoryCache(memory_bytes, metrics), None
    )  # type: ignore[arg-type]


def test_stream_bytes_and_ranges(tiny):
    fake = FakeReconstructor()
    engine = _engine(fake)
    bundle = m.load_bundle(tiny.data)
    lay = engine.layout("d" * 64, bundle, "float32")
    full = b"".join(bytes(p) for p in engine.stream(lay, bundle, 0, lay.total))
    got = load_st(full)
    assert all(torch.all(got[e.name] == i) for i, e in enumerate(bundle.manifest))
    assert fake.calls == [("full", None)]
    # The full job leaves the engine's single-flight table from its worker thread, just after its
    # last piece: a range asked before that joins it (correct, but not what this test checks).
    deadline = time.monotonic() + 10
    while engine._jobs and time.monotonic() < deadline:
        time.sleep(0.01)
    name = lay.names[-1]
    b, e = lay.spans[name]
    part = b"".join(bytes(p) for p in engine.stream(lay, bundle, b + 1, e))
    assert part == full[b + 1 : e] and fake.calls[-1] == ("partial", [name])


def test_concurrent_full_streams_share_one_reconstruction(tiny):
    fake = FakeReconstructor()
    fake.gate.clear()  # hold the job until both readers have joined it
    engine = _engine(fake, memory_bytes=1 << 20)
    bundle = m.load_bundle(tiny.data)
    lay = engine.layout("e" * 64, bundle, "native")
    bodies: list[bytes] = []

    def read() -> None:
        bodies.append(b"".join(bytes(p) for p in engine.stream(lay, bundle, 0, lay.total)))

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    threading.Timer(0.3, fake.gate.set).start()
    for t in threads:
        t.join(10)
    assert len(bodies) == 2 and bodies[0] == bodies[1]
    assert [k for k, _ in fake.calls] == ["full"]  # one job for both (single flight)
