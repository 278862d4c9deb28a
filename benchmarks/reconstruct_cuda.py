"""Reconstruction on a CUDA device against the device's own limits (issue 14 §1, §5).

One run measures, interleaved over ``--repeats`` and each the best of ``--best-of``:

* the device's limits: float32 GEMM throughput with TF32 off (``torch.mm`` on 8192² matrices: the
  FP32 rate the decode's arithmetic can use), TF32 and bf16 GEMM for context, HBM write bandwidth
  (``fill_`` of a 2 GiB buffer) and device-to-host bandwidth into pinned memory;
* the decode of a ~100M-parameter bundle (six 4096² layers, the default generator: k=8, d=1024,
  width 64, depth 2; ``--quick``: 4 x 512²) into device memory (``iter_reconstruct`` on CUDA,
  synchronised), as params/s and as fractions of the FP32 GEMM rate (its useful FLOPs) and of
  HBM write bandwidth (4 bytes a parameter);
* the same handed to the host by ``CUDABackend`` (pinned buffers, copies on a second stream
  overlapped with the next decode): what a server streams, against the D2H bandwidth.

Without a CUDA device it says so and exits 0 (the CPU benchmark is ``reconstruct.py``).

    python benchmarks/reconstruct_cuda.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reconstruct import layer_shapes, mcnc_bundle
from mcnc_core import CUDABackend, MCNCConfig, iter_reconstruct


def _cuda_timed(fn: Callable[[], Any], tries: int) -> float:
    """Best wall time of ``fn`` over ``tries`` runs, the device synchronised around each."""
    best = float("inf")
    for _ in range(tries):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_rate(n: int, dtype: torch.dtype, tf32: bool, tries: int) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    out = torch.empty(n, n, device="cuda", dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32  # the benchmark's own process: set, measured, restored
    try:
        torch.mm(a, b, out=out)
        return 2 * n**3 / _cuda_timed(lambda: torch.mm(a, b, out=out), tries)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = MCNCConfig()
    spec = cfg.generator_spec()
    flops_per_param = spec.flops_per_chunk / spec.chunk_size
    bundle = mcnc_bundle(layer_shapes(args.quick), cfg)
    params = bundle.num_params
    backend = CUDABackend("cuda")
    gemm_n = 2048 if args.quick else 8192
    hbm = torch.empty((64 << 20) if args.quick else (512 << 20), device="cuda")  # 256 MiB / 2 GiB
    dev_src = torch.empty((16 << 20) if args.quick else (256 << 20), device="cuda")
    pinned = torch.empty(dev_src.shape, pin_memory=True)

    def decode_device() -> None:
        for _n, _t in iter_reconstruct(bundle, device="cuda"):
            pass

    def decode_device_fp16() -> None:
        for _n, _t in iter_reconstruct(bundle, device="cuda", dtype=torch.float16):
            pass

    def to_host() -> None:
        for _n, _t in backend.reconstruct(bundle):
            pass

    def to_host_fp16() -> None:
        for _n, _t in backend.reconstruct(bundle, dtype=torch.float16):
            pass

    kinds = {
        "device": decode_device,
        "device_fp16": decode_device_fp16,
        "host": to_host,
        "host_fp16": to_host_fp16,
    }
    for fn in kinds.values():
        fn()  # warm up: generator on the device, allocator, pinned host cache
    samples: dict[str, list[float]] = {
        k: [] for k in ("fp32", "tf32", "bf16", "hbm_write", "d2h", *(f"t_{k}" for k in kinds))
    }
    for _ in range(args.repeats):
        samples["fp32"].append(gemm_rate(gemm_n, torch.float32, False, args.best_of))
        samples["tf32"].append(gemm_rate(gemm_n, torch.float32, True, args.best_of))
        samples["bf16"].append(gemm_rate(gemm_n, torch.bfloat16, False, args.best_of))
        samples["hbm_write"].append(hbm.numel() * 4 / _cuda_timed(lambda: hbm.fill_(1.0), args.best_of))
        copy_s = _cuda_timed(lambda: pinned.copy_(dev_src, non_blocking=True), args.best_of)
        samples["d2h"].append(dev_src.numel() * 4 / copy_s)
        for kind, fn in kinds.items():
            samples[f"t_{kind}"].append(_cuda_timed(fn, args.best_of))
    med = {k: statistics.median(v) for k, v in samples.items()}
    rates = {k: params / med[f"t_{k}"] for k in kinds}
    bytes_out = {"device": 4, "device_fp16": 2, "host": 4, "host_fp16": 2}
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
        "params": params,
        "flops_per_param": flops_per_param,
        "repeats": args.repeats,
        "best_of": args.best_of,
        "fp32_gemm_flops": med["fp32"],
        "tf32_gemm_flops": med["tf32"],
        "bf16_gemm_flops": med["bf16"],
        "hbm_write_bytes_per_s": med["hbm_write"],
        "d2h_bytes_per_s": med["d2h"],
        **{f"{k}_params_per_s": v for k, v in rates.items()},
        **{f"{k}_fraction_fp32": v * flops_per_param / med["fp32"] for k, v in rates.items()},
        **{f"{k}_fraction_hbm_write": v * bytes_out[k] / med["hbm_write"] for k, v in rates.items()},
        **{f"{k}_fraction_d2h": rates[k] * bytes_out[k] / med["d2h"] for k in ("host", "host_fp16")},
        "samples": samples,
    }


def report(r: dict[str, Any]) -> str:
    g = 1e9
    lines = [
        f"{r['device']} (torch {r['torch']}, CUDA {r['cuda']}); {r['params'] / 1e6:.1f}M params, "
        f"median of {r['repeats']} repeats, best of {r['best_of']}",
        f"limits: FP32 GEMM {r['fp32_gemm_flops'] / 1e12:.1f} TFLOP/s (TF32 {r['tf32_gemm_flops'] / 1e12:.1f}, "
        f"bf16 {r['bf16_gemm_flops'] / 1e12:.1f}), HBM write {r['hbm_write_bytes_per_s'] / g:.0f} GB/s, "
        f"D2H pinned {r['d2h_bytes_per_s'] / g:.1f} GB/s",
    ]
    for k in ("device", "device_fp16", "host", "host_fp16"):
        extra = f", {r[f'{k}_fraction_d2h']:.2f} of D2H" if f"{k}_fraction_d2h" in r else ""
        lines.append(
            f"  {k:12s} {r[f'{k}_params_per_s'] / g:7.2f} Gparam/s = {r[f'{k}_fraction_fp32']:.2f} of FP32 GEMM, "
            f"{r[f'{k}_fraction_hbm_write']:.2f} of HBM write{extra}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~1M parameters (what the GPU tests run)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5, quick 2)")
    p.add_argument("--best-of", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("reconstruct_cuda: no CUDA device here; nothing measured (the CPU benchmark is reconstruct.py)")
        return 0
    args.repeats = args.repeats or (2 if args.quick else 5)
    r = run(args)
    print(report(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
