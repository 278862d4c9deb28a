"""Decoding speed of this checkout against another one, side by side on the same machine.

Each round runs one child process per checkout, alternating (the machine may be shared, so
neighbouring measurements are compared), and every child measures, on the ~100M-parameter
bundle of ``benchmarks/reconstruct.py``:

* ``kernel``: ``decode_tensor_into`` over every tensor into reused, already-touched buffers;
* ``iter_fp16``: a one-off ``iter_reconstruct(bundle, dtype=torch.float16)`` (a server streaming
  half-precision weights);
* ``stream_fp32`` / ``stream_fp16`` / ``stream_bf16``: ``iter_reconstruct`` with one long-lived
  ``OutputRecycler`` (how the server streams ``?dtype=``), per output dtype, so the half-precision
  rate can be read against the float32 rate measured in the same process;
* ``keep``: ``reconstruct`` (every output kept: all new memory), and the machine's float32 FMA
  peak (``benchmarks/fma_peak.py``) to express it as a fraction (``keep_fma``);
* the GEMM term of the limit (as ``benchmarks/reconstruct.py``), so rounds can be compared.

The other checkout needs ``mcnc_core`` and ``benchmarks/reconstruct.py`` with the API of a9a4d3c
or later; make one with ``git worktree add ../mcnc-old <commit>``.

    python benchmarks/decode_ab.py --against ../mcnc-old            # 3 rounds
    python benchmarks/decode_ab.py --quick --against .              # ~1M params, what the tests run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def child(root: Path, quick: bool, calls: int) -> dict[str, float]:
    """Measure in this process with ``root``'s ``mcnc_core`` (imported from ``root`` first)."""
    sys.path[:0] = [str(root), str(root / "benchmarks")]
    import reconstruct as rb  # the benchmark module of ``root``
    import torch

    import mcnc_core
    from mcnc_core import MCNCConfig, iter_reconstruct
    from mcnc_core.decode import decode_tensor_into
    from mcnc_core.reconstruct import _generator

    if not Path(mcnc_core.__file__).resolve().is_relative_to(root):  # an installed copy won
        raise SystemExit(f"imported {mcnc_core.__file__}, not the mcnc_core of {root}")
    cfg = MCNCConfig()
    spec = cfg.generator_spec()
    bundle = rb.mcnc_bundle(rb.layer_shapes(quick), cfg)
    gen = _generator(spec, torch.device("cpu"))
    entries = [e for e in bundle.manifest if e.storage == "mcnc"]
    scratch = {e.name: torch.zeros(e.shape) for e in entries}

    def kernel() -> None:
        with torch.no_grad():
            for e in entries:
                sl = slice(e.chunk_offset, e.chunk_offset + e.chunks)
                decode_tensor_into(gen, bundle.alpha[sl], bundle.beta[sl], e.shape, e.factors(), scratch[e.name])

    def iter_fp16() -> None:
        for _name, _t in iter_reconstruct(bundle, dtype=torch.float16):
            pass

    from mcnc_core import reconstruct
    from mcnc_core.hostmem import OutputRecycler

    recycler = OutputRecycler()

    def stream(dtype: torch.dtype) -> Any:
        def fn() -> None:
            for _name, _t in iter_reconstruct(bundle, dtype=dtype, recycler=recycler):
                pass

        return fn

    def keep() -> None:
        state = reconstruct(bundle)
        del state

    out: dict[str, float] = {}
    fns = {"kernel": kernel, "iter_fp16": iter_fp16, "keep": keep}
    fns.update(stream_fp32=stream(torch.float32), stream_fp16=stream(torch.float16), stream_bf16=stream(torch.bfloat16))
    for fn in fns.values():
        fn()  # warm up (the recycler, the pool, the generator)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(calls):  # interleaved within the process too
        for name, fn in fns.items():
            times[name].append(rb._timed(fn))
    for name, ts in times.items():
        out[name] = bundle.num_params / statistics.median(ts)
    flops_per_param = spec.flops_per_chunk / spec.chunk_size
    out["limit_gemm"] = rb.gemm_flops(1024 if quick else 2048, 3) / flops_per_param
    from fma_peak import all_core_peak

    peak = all_core_peak(tries=3)["peak"]
    if not isinstance(peak, str):
        out["fma_peak"] = float(peak)
        out["keep_fma"] = out["keep"] * flops_per_param / float(peak)
    return out


def run_child(root: Path, quick: bool, calls: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--child", str(root), "--calls", str(calls)] + (["--quick"] if quick else [])
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", type=Path, required=False, help="the other checkout (default: this one)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, quick 1)")
    p.add_argument("--calls", type=int, default=None, help="timed calls per measurement (default 10, quick 2)")
    p.add_argument("--quick", action="store_true", help="~1M parameters (seconds); what the tests run")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    calls = args.calls or (2 if args.quick else 10)
    if args.child is not None:
        print(json.dumps(child(args.child.resolve(), args.quick, calls)))
        return 0
    other = (args.against or HERE).resolve()
    rounds = args.rounds or (1 if args.quick else 3)
    results: dict[str, list[dict[str, Any]]] = {"this": [], "other": []}
    for _ in range(rounds):
        results["other"].append(run_child(other, args.quick, calls))
        results["this"].append(run_child(HERE, args.quick, calls))
    print(f"this: {HERE}\nother: {other}\n{rounds} alternating rounds, medians of {calls} calls each (Mparams/s)")
    print(f"{'':<12}{'other':>28}{'this':>28}{'this/other':>12}")
    keys = ["kernel", "iter_fp16", "stream_fp32", "stream_fp16", "stream_bf16", "keep", "limit_gemm"]
    for key in keys:
        if not all(key in r for rs in results.values() for r in rs):
            continue
        a = [r[key] / 1e6 for r in results["other"]]
        b = [r[key] / 1e6 for r in results["this"]]
        ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
        fmt = " / ".join(f"{v:,.0f}" for v in a), " / ".join(f"{v:,.0f}" for v in b)
        print(f"{key:<12}{fmt[0]:>28}{fmt[1]:>28}{ratio:>11.2f}x")
    print("\nwithin each process (median over rounds):")
    for side, rs in results.items():
        half = {k: statistics.median(r[k] / r["stream_fp32"] for r in rs) for k in ("stream_fp16", "stream_bf16")}
        fma = [r["keep_fma"] for r in rs if "keep_fma" in r]
        line = f"  {side:<6} fp16 / fp32 stream {half['stream_fp16']:.2f}, bf16 / fp32 {half['stream_bf16']:.2f}"
        print(line + (f"; reconstruct (all kept) {statistics.median(fma):.2f} of the FMA peak" if fma else ""))
    if args.json:
        args.json.write_text(json.dumps({"this": str(HERE), "other": str(other), **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
