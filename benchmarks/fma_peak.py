"""This CPU's float32 FMA peak, measured by a tiny compiled microkernel (single core and all cores).

The kernel keeps independent chains of native-width float32 vectors (``a = a * b + c``; GCC/Clang
vector extensions, ``-O3 -march=native -ffp-contract=fast`` so each line is one FMA instruction):
16 chains of 16 lanes where AVX-512 gives 32 vector registers, else 12 chains of 8 lanes (AVX2's
16 registers: 12 accumulators + the two operands; 16 chains of 16 lanes would spill to the stack
there and measure memory, not FMA — seen on an AMD EPYC, at a tenth of its peak). That covers FMA
latency times the FMA ports of current x86-64 and Arm cores. Each run is sized by a short
calibration run, so it lasts ~``seconds`` on any core, however fast. It is compiled
with the machine's C compiler into a temporary directory and called through ``ctypes``, which
releases the GIL, so ``threads`` calls run in parallel for the all-core figure. The result is the
best of ``tries`` runs: a loaded host only makes runs slower, never faster, so the best is the
least disturbed estimate of what the hardware can do.

    python benchmarks/fma_peak.py            # prints GFLOP/s on 1 core and on all cores

Returns ``None`` (and says why) where no C compiler is available: the reconstruction benchmark
then reports only its GEMM-based limit.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["all_core_peak", "fma_peak"]

_SOURCE = r"""
#include <stdint.h>
#if defined(__AVX512F__)
#define LANES 16
#define CHAINS 16
#else
#define LANES 8
#define CHAINS 12
#endif
typedef float vec __attribute__((vector_size(LANES * 4)));
int64_t flops_per_iter(void) { return (int64_t)CHAINS * LANES * 2; }  /* multiply + add */
double fma_loop(int64_t iters) {
    vec acc[CHAINS], b, c;
    for (int j = 0; j < LANES; j++) { b[j] = 0.999999f; c[j] = 1e-7f; }
    for (int i = 0; i < CHAINS; i++) for (int j = 0; j < LANES; j++) acc[i][j] = (float)(i + j);
    for (int64_t it = 0; it < iters; it++)
        for (int i = 0; i < CHAINS; i++) acc[i] = acc[i] * b + c;
    double s = 0;  /* returned so the compiler cannot drop the loop */
    for (int i = 0; i < CHAINS; i++) for (int j = 0; j < LANES; j++) s += acc[i][j];
    return s;
}
"""


@functools.lru_cache(maxsize=1)
def _kernel() -> ctypes.CDLL | str:
    """The compiled kernel, or why there is none."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return "no C compiler (cc, gcc or clang) on PATH"
    tmp = Path(tempfile.mkdtemp(prefix="mcnc-fma-"))
    src, lib = tmp / "fma.c", tmp / "fma.so"
    src.write_text(_SOURCE)
    cmd = [cc, "-O3", "-march=native", "-ffp-contract=fast", "-shared", "-fPIC", str(src), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"{' '.join(cmd)} failed: {proc.stderr.strip()[:200]}"
    kernel = ctypes.CDLL(str(lib))
    kernel.fma_loop.restype = ctypes.c_double
    kernel.fma_loop.argtypes = [ctypes.c_int64]
    kernel.flops_per_iter.restype = ctypes.c_int64
    return kernel


def _run(kernel: ctypes.CDLL, threads: int, iters: int) -> float:
    """FLOP/s of ``threads`` simultaneous kernel calls of ``iters`` iterations each."""
    start = threading.Barrier(threads + 1)

    def work() -> None:
        start.wait()
        kernel.fma_loop(iters)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return threads * iters * kernel.flops_per_iter() / (time.perf_counter() - t0)


def fma_peak(threads: int, *, seconds: float = 0.2, tries: int = 3) -> float | str:
    """Best float32 FMA FLOP/s with ``threads`` threads over ``tries`` runs of ~``seconds`` each,
    or a string saying why it cannot be measured here."""
    kernel = _kernel()
    if isinstance(kernel, str):
        return kernel
    # Calibrate on this core: a fixed count sized for a fast core ran 60x too long on a slow one.
    probe = 1 << 16
    rate = _run(kernel, 1, probe) / kernel.flops_per_iter()  # iterations per second, one thread
    iters = max(probe, int(seconds * rate))
    return max(_run(kernel, threads, iters) for _ in range(tries))


def all_core_peak(*, tries: int = 3) -> dict[str, float | str]:
    """``{"one": 1-core FLOP/s, "all": all-core FLOP/s, "peak": max(all, one x cores)}``.

    ``peak`` is what the hardware can do with every core: on a host where other processes hold
    some cores the measured all-core figure falls, while one undisturbed core times the core
    count does not (FMA throughput scales with cores; all-core turbo may be a little lower, so
    this errs on the side of a higher peak, i.e. a lower, conservative fraction for the decode).
    """
    cores = os.cpu_count() or 1
    one, everything = fma_peak(1, tries=tries), fma_peak(cores, tries=tries)
    if isinstance(one, str) or isinstance(everything, str):
        return {"one": one, "all": everything, "peak": one if isinstance(one, str) else everything}
    return {"one": one, "all": everything, "peak": max(everything, one * cores)}


def main() -> int:
    r = all_core_peak(tries=5)
    for key, label in (("one", "1 core"), ("all", f"{os.cpu_count()} cores, measured"), ("peak", "peak")):
        v = r[key]
        print(f"{label}: " + (f"{v / 1e9:,.1f} GFLOP/s" if isinstance(v, float) else v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
