"""Reconstruction speed of MCNC against this machine's limit, and against NOLA and PRANC.

One run (issue 2 §5):

1. measures the machine: its float32 FMA peak (``benchmarks/fma_peak.py``: a compiled
   microkernel, one core and all cores; the peak is the larger of all cores measured and one core
   times the core count, so a loaded host does not lower it), dense float32 GEMM throughput (large
   square ``torch.mm``, best of several) and memory write bandwidth, twice: *warm* (``fill_``
   into a buffer whose pages are already mapped: the hardware's store bandwidth) and *fresh*
   (``torch.empty`` + ``fill_``: the cost of writing a newly allocated output, page faults
   included — what ``reconstruct`` must pay for every tensor it returns);
2. reconstructs a ~100M-parameter MCNC bundle (default config, full mode, random but real codes)
   four ways and prints params/s and the fraction of the limit
   ``min(GEMM FLOP/s / (flops_per_chunk / chunk_size), write bandwidth / 4 bytes)`` for each,
   and the fraction of the FMA peak its useful FLOPs (``flops_per_chunk / chunk_size`` per
   parameter) reach — the CPU's real limit, where the GEMM figure is only what MKL reaches:
   ``iter_reconstruct`` as a one-off call (each tensor dropped as soon as the next is asked for;
   the first outputs are new memory), ``iter_reconstruct`` with a long-lived recycler (how the
   server streams: dropped outputs of earlier requests are reused), ``reconstruct_into`` an
   existing model's tensors (how the client loads a model), and ``reconstruct`` (all tensors
   kept: every output is new memory);
3. reconstructs NOLA- and PRANC-style models storing the same number of numbers and prints
   MCNC's speed ratio over each (PRANC, and NOLA beyond ``--nola-layers``, are extrapolated
   from measured slices; the output says so and how).

Every measurement is repeated, interleaved with the others (the machine may be shared), and
reported as a median over repeats. Within a repeat the limit's probes and every MCNC way are
each the best of ``--best-of`` runs (3), so both sides of a fraction are estimated alike (until
2026-12-02 the MCNC ways were timed once per repeat against a best-of-3 limit). NOLA and PRANC
are timed once per repeat: MCNC's ratios over them are in the hundreds and the millions.
``--quick`` (~1M parameters, a few seconds) is what the test suite runs.

    python benchmarks/reconstruct.py                 # ~100M parameters
    python benchmarks/reconstruct.py --quick --json results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fma_peak import all_core_peak
from mcnc_core import Bundle, MCNCConfig, iter_reconstruct, reconstruct, reconstruct_into
from mcnc_core.hostmem import OutputRecycler
from mcnc_core.manifest import TensorEntry

BYTES_PER_PARAM = 4  # float32 output
# Ways of reconstructing that are measured; "compute_only" is the decoding kernel alone.
KINDS = ("iter", "iter_shared", "into", "reconstruct", "compute_only")


# --------------------------------------------------------------------------- machine probes
def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gemm_flops(n: int, tries: int) -> float:
    """Best float32 FLOP/s of ``torch.mm`` on ``n x n`` matrices over ``tries`` runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm up (threads, pages)
    return 2 * n**3 / min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(tries))


def write_bandwidth_warm(buf: torch.Tensor, tries: int) -> float:
    """Best bytes/s of ``fill_`` into an already-touched buffer (store bandwidth, no page faults)."""
    buf.fill_(0.0)
    return buf.numel() * buf.element_size() / min(_timed(lambda: buf.fill_(1.0)) for _ in range(tries))


def write_bandwidth_fresh(numel: int, tries: int) -> float:
    """Best bytes/s of ``torch.empty(numel).fill_`` (a newly allocated output, page faults included)."""

    def once() -> None:
        torch.empty(numel).fill_(1.0)

    return numel * BYTES_PER_PARAM / min(_timed(once) for _ in range(tries))


# --------------------------------------------------------------------------- models
def layer_shapes(quick: bool) -> list[tuple[int, int]]:
    """Linear layers (out, in): 6 x 4096^2 (~100.7M params) or 4 x 512^2 (~1.05M)."""
    return [(512, 512)] * 4 if quick else [(4096, 4096)] * 6


def mcnc_bundle(shapes: list[tuple[int, int]], cfg: MCNCConfig, seed: int = 0) -> Bundle:
    """A full-mode bundle of Linear layers with real codes, built directly (no training, no export).

    Codes are drawn like ``compress`` initialises them: ``alpha ~ U(-L, L)``; ``beta`` gives each
    chunk the RMS of PyTorch's default Linear init. Biases travel raw.
    """
    spec = cfg.generator_spec()
    g = torch.Generator().manual_seed(seed)
    manifest, alphas, betas, raw, offset = [], [], [], {}, 0
    for i, (rows, cols) in enumerate(shapes):
        entry = TensorEntry(f"layers.{i}.weight", (rows, cols), "F32", "mcnc")
        n = entry.chunks_needed(spec.chunk_size)
        manifest.append(TensorEntry(entry.name, entry.shape, "F32", "mcnc", 0, offset, n))
        offset += n
        alphas.append((torch.rand(n, spec.k, generator=g) * 2 - 1) * spec.bound)
        rms = 1 / math.sqrt(3 * cols)  # kaiming_uniform(a=sqrt(5)) => U(-1/sqrt(in), 1/sqrt(in))
        betas.append(rms * math.sqrt(spec.chunk_size) * (1 + 0.1 * torch.rand(n, generator=g)))
        manifest.append(TensorEntry(f"layers.{i}.bias", (rows,), "F32", "raw"))
        raw[f"layers.{i}.bias"] = (torch.rand(rows, generator=g) * 2 - 1) / math.sqrt(cols)
    return Bundle(spec, cfg, tuple(manifest), torch.cat(alphas), torch.cat(betas), raw, None)


def nola_layer(rows: int, cols: int, rank: int, coeffs: int, seed: int, batch_elems: int) -> torch.Tensor:
    """NOLA: ``W = A @ B``, ``A = sum_i a_i A_i`` (rows x r), ``B = sum_j b_j B_j`` (r x cols).

    ``coeffs`` trained numbers split evenly between a and b; the frozen uniform bases are
    regenerated from the layer's seed with torch's (fast, non-portable) CPU generator, in batches
    of bases, each batch reduced with one GEMV.
    """
    g = torch.Generator().manual_seed(seed)
    m_a, m_b = coeffs // 2, coeffs - coeffs // 2
    a, b = torch.randn(m_a, generator=g), torch.randn(m_b, generator=g)

    def combine(coef: torch.Tensor, size: int) -> torch.Tensor:
        acc = torch.zeros(size)
        per = max(1, batch_elems // size)
        buf = torch.empty(per, size)
        for s in range(0, coef.numel(), per):
            k = min(per, coef.numel() - s)
            basis = torch.rand(k, size, generator=g, out=buf[:k])
            acc.addmv_(basis.t(), coef[s : s + k])
        return acc

    A = combine(a, rows * rank).view(rows, rank)
    B = combine(b, rank * cols).view(rank, cols)
    return A @ B


def pranc_slice(num_coeffs: int, num_params: int, seed: int, batch_elems: int) -> torch.Tensor:
    """PRANC on a slice: ``theta = sum_j c_j theta_j`` over ``num_coeffs`` pseudo-random vectors
    of ``num_params`` entries, generated in batches (one generator: generous to the baseline)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(num_coeffs, generator=g)
    acc = torch.zeros(num_params)
    per = max(1, batch_elems // num_params)
    buf = torch.empty(per, num_params)
    for s in range(0, num_coeffs, per):
        k = min(per, num_coeffs - s)
        acc.addmv_(torch.rand(k, num_params, generator=g, out=buf[:k]).t(), c[s : s + k])
    return acc


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    cfg = MCNCConfig()
    spec = cfg.generator_spec()
    flops_per_param = spec.flops_per_chunk / spec.chunk_size
    shapes = layer_shapes(quick)
    t0 = time.perf_counter()
    bundle = mcnc_bundle(shapes, cfg)
    build_s = time.perf_counter() - t0
    P = bundle.num_params
    stored = bundle.stored_numbers
    codes_per_layer = [e.chunks * (spec.k + 1) for e in bundle.manifest if e.storage == "mcnc"]

    gemm_n = 1024 if quick else 2048
    bw_numel = (1 << 22) if quick else (1 << 26)  # 16 MiB / 256 MiB
    warm_buf = torch.empty(bw_numel)
    nola_layers = len(shapes) if quick else min(args.nola_layers, len(shapes))
    pranc_params = 1 << 14 if quick else 1 << 18
    pranc_coeffs = 1 << 10 if quick else 1 << 11
    batch = 1 << 22  # random numbers generated per batch by the baselines (16 MiB)

    samples: dict[str, list[float]] = {
        k: [] for k in ("gemm", "bw_warm", "bw_fresh", "fma_one", "fma_all", "fma_peak", *KINDS, "nola", "pranc")
    }
    fma_missing: str | None = None
    # compute-only: decode every tensor into one reused, already-touched buffer (no page faults)
    from mcnc_core.decode import decode_tensor_into
    from mcnc_core.reconstruct import _generator

    gen = _generator(spec, torch.device("cpu"))
    scratch = {e.name: torch.zeros(e.shape) for e in bundle.manifest if e.storage == "mcnc"}

    def compute_only() -> None:
        with torch.no_grad():
            for e in bundle.manifest:
                if e.storage == "mcnc":
                    sl = slice(e.chunk_offset, e.chunk_offset + e.chunks)
                    decode_tensor_into(gen, bundle.alpha[sl], bundle.beta[sl], e.shape, e.factors(), scratch[e.name])

    def consume() -> None:
        for _name, _t in iter_reconstruct(bundle):
            pass

    recycler = OutputRecycler()  # the server keeps one for all its reconstructions

    def consume_shared() -> None:
        for _name, _t in iter_reconstruct(bundle, recycler=recycler):
            pass

    model_state = {e.name: torch.zeros(e.shape) for e in bundle.manifest}  # a constructed model's tensors

    def into() -> None:
        reconstruct_into(bundle, model_state)

    def keep() -> None:
        state = reconstruct(bundle)
        assert len(state) == len(bundle.manifest)

    def nola() -> None:
        for i, (rows, cols) in enumerate(shapes[:nola_layers]):
            nola_layer(rows, cols, args.nola_rank, codes_per_layer[i], seed=i, batch_elems=batch)

    def pranc() -> None:
        pranc_slice(pranc_coeffs, pranc_params, seed=0, batch_elems=batch)

    runs = {"iter": consume, "iter_shared": consume_shared, "into": into, "reconstruct": keep}
    runs["compute_only"] = compute_only
    consume_shared()  # warm up: generator cache, thread pool (and the long-lived recycler)
    for _ in range(args.repeats):
        samples["gemm"].append(gemm_flops(gemm_n, args.best_of))
        samples["bw_warm"].append(write_bandwidth_warm(warm_buf, args.best_of))
        samples["bw_fresh"].append(write_bandwidth_fresh(bw_numel, args.best_of))
        fma = all_core_peak(tries=args.best_of)
        if isinstance(fma["peak"], str):
            fma_missing = fma["peak"]
        else:
            for key in ("one", "all", "peak"):
                samples[f"fma_{key}"].append(float(fma[key]))
        for kind, fn in runs.items():
            samples[kind].append(min(_timed(fn) for _ in range(args.best_of)))
        samples["nola"].append(_timed(nola))
        samples["pranc"].append(_timed(pranc))
    med = {k: statistics.median(v) for k, v in samples.items() if v}

    limit_gemm = med["gemm"] / flops_per_param
    limit_warm = med["bw_warm"] / BYTES_PER_PARAM
    limit_fresh = med["bw_fresh"] / BYTES_PER_PARAM
    limit = min(limit_gemm, limit_warm)  # the limit, with the hardware store bandwidth
    limit_new_memory = min(limit_gemm, limit_fresh)  # same, charging page faults of new outputs
    nola_pps = sum(r * c for r, c in shapes[:nola_layers]) / med["nola"]
    pranc_pps = pranc_coeffs * pranc_params / (med["pranc"] * stored)
    speed = {k: P / med[k] for k in KINDS}
    # the same fractions taken within each repeat (ours and the limit measured moments apart)
    per_repeat = {
        k: statistics.median(
            P / t / min(g / flops_per_param, bw / BYTES_PER_PARAM)
            for t, g, bw in zip(samples[k], samples["gemm"], samples["bw_warm"], strict=True)
        )
        for k in KINDS
    }
    # The CPU's real limit: its float32 FMA peak (all cores), against the decode's useful FLOPs.
    fma: dict[str, Any] = {"fma_unavailable": fma_missing}
    if fma_missing is None:
        fma.update(
            fma_one_core_flops=med["fma_one"],
            fma_all_core_flops=med["fma_all"],
            fma_peak_flops=med["fma_peak"],
            **{f"fma_fraction_{k}": speed[k] * flops_per_param / med["fma_peak"] for k in KINDS},
            fma_fraction_per_repeat_median={
                k: statistics.median(
                    P / t * flops_per_param / peak for t, peak in zip(samples[k], samples["fma_peak"], strict=True)
                )
                for k in KINDS
            },
        )
    return {
        **fma,
        "quick": quick,
        "machine": machine(),
        "params": P,
        "stored_numbers": stored,
        "compression": P / stored,
        "bundle_build_s": build_s,
        "repeats": args.repeats,
        "best_of": args.best_of,
        "generator": spec.to_dict(),
        "flops_per_param": flops_per_param,
        "gemm_flops": med["gemm"],
        "write_bw_warm": med["bw_warm"],
        "write_bw_fresh": med["bw_fresh"],
        "limit_params_per_s": limit,
        "limit_gemm_params_per_s": limit_gemm,
        "limit_bw_params_per_s": limit_warm,
        "limit_new_memory_params_per_s": limit_new_memory,
        **{f"mcnc_{k}_params_per_s": speed[k] for k in KINDS},
        **{f"fraction_{k}": speed[k] / limit for k in KINDS},
        "fraction_iter_new_memory": speed["iter"] / limit_new_memory,
        "fraction_per_repeat_median": per_repeat,
        "nola_params_per_s": nola_pps,
        "nola_rank": args.nola_rank,
        "nola_layers_measured": nola_layers,
        "nola_extrapolated": nola_layers < len(shapes),
        "pranc_params_per_s": pranc_pps,
        "pranc_slice": {"coeffs": pranc_coeffs, "params": pranc_params, "full_coeffs": stored, "full_params": P},
        "ratio_over_nola": speed["iter"] / nola_pps,
        "ratio_over_pranc": speed["iter"] / pranc_pps,
        "samples_s": samples,
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


LABELS = {
    "iter": "MCNC iter_reconstruct, one-off call",
    "iter_shared": "MCNC iter_reconstruct, long-lived recycler (server)",
    "into": "MCNC reconstruct_into a model (client load)",
    "reconstruct": "MCNC reconstruct (all kept, new memory)",
    "compute_only": "MCNC decode, reused buffer (the kernel)",
}


def report(r: dict[str, Any]) -> str:
    m = r["machine"]

    def rate(x: float) -> str:
        return f"{x / 1e6:,.1f} M/s" if x >= 1e5 else f"{x:,.0f} /s"

    rows = [
        ("machine", f"{m['cpu']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads, torch {m['torch']}"),
        ("bundle", f"{r['params']:,} params, {r['stored_numbers']:,} stored numbers ({r['compression']:.1f}x)"),
        ("GEMM fp32 (mm, best of runs, median)", f"{r['gemm_flops'] / 1e9:,.1f} GFLOP/s"),
        ("write BW warm (fill_, mapped pages)", f"{r['write_bw_warm'] / 1e9:,.2f} GB/s"),
        ("write BW fresh (empty+fill_)", f"{r['write_bw_fresh'] / 1e9:,.2f} GB/s"),
        ("generator FLOPs / param", f"{r['flops_per_param']:.2f}"),
        *(
            [("FMA peak fp32", r["fma_unavailable"])]
            if r["fma_unavailable"]
            else [
                (
                    "FMA peak fp32 (1 core; all measured; peak)",
                    f"{r['fma_one_core_flops'] / 1e9:,.1f}; {r['fma_all_core_flops'] / 1e9:,.1f}; "
                    f"{r['fma_peak_flops'] / 1e9:,.1f} GFLOP/s",
                ),
                *(
                    (f"{LABELS[k]} vs FMA peak", f"{r[f'fma_fraction_{k}']:.2f} of peak")
                    for k in ("compute_only", "iter_shared", "iter")
                ),
                (
                    "FMA-peak fractions within each repeat (median)",
                    ", ".join(f"{k} {v:.2f}" for k, v in r["fma_fraction_per_repeat_median"].items()),
                ),
            ]
        ),
        ("limit: GEMM term", rate(r["limit_gemm_params_per_s"])),
        ("limit: write term (warm BW / 4 B)", rate(r["limit_bw_params_per_s"])),
        ("LIMIT min(GEMM, warm BW)", rate(r["limit_params_per_s"])),
        *(
            (label, f"{rate(r[f'mcnc_{k}_params_per_s'])}  = {r[f'fraction_{k}']:.2f} of limit")
            for k, label in LABELS.items()
        ),
        (
            "fractions within each repeat (median)",
            ", ".join(f"{k} {v:.2f}" for k, v in r["fraction_per_repeat_median"].items()),
        ),
        (
            "limit with fresh-memory BW",
            f"{rate(r['limit_new_memory_params_per_s'])}; iter = {r['fraction_iter_new_memory']:.2f} of it",
        ),
        (
            f"NOLA r={r['nola_rank']}" + (" (extrapolated)" if r["nola_extrapolated"] else ""),
            f"{rate(r['nola_params_per_s'])}; MCNC is {r['ratio_over_nola']:,.0f}x faster",
        ),
        ("PRANC (extrapolated)", f"{rate(r['pranc_params_per_s'])}; MCNC is {r['ratio_over_pranc']:,.3g}x faster"),
    ]
    w = max(len(k) for k, _ in rows)
    lines = [f"{k:<{w}}  {v}" for k, v in rows]
    s = r["pranc_slice"]
    lines.append("")
    lines.append(
        f"PRANC: measured {s['coeffs']} coefficients x {s['params']:,} params; a full reconstruction draws "
        f"{s['full_coeffs']:,} x {s['full_params']:,} numbers, so its time is scaled by "
        f"(C x P) / (c x p); params/s = P / that time."
    )
    if r["nola_extrapolated"]:
        lines.append(
            f"NOLA: measured {r['nola_layers_measured']} of the identical layers; params/s is that "
            "slice's (every layer costs the same)."
        )
    lines.append(
        f"medians of {r['repeats']} interleaved repeats, each the best of {r['best_of']} runs; "
        "speed ratios use iter_reconstruct."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~1M parameters (seconds); what the tests run")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5, quick 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--best-of", type=int, default=3, help="runs per MCNC way and repeat (the limit's too)")
    p.add_argument("--nola-rank", type=int, default=8)
    p.add_argument("--nola-layers", type=int, default=1, help="full mode: NOLA layers actually reconstructed")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    r = run(args)
    print(report(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
