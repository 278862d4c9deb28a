"""The ``mcnc`` command: core subcommands (``inspect``, ``verify``) plus those that installed
packages register under the entry-point group ``mcnc.commands`` (``serve``, ``push``, ...).

Exit codes: 0 success, 1 verification failed, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

__all__ = ["main"]

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _summary(path: str) -> dict[str, Any]:
    import os

    from mcnc_core.bundle import load_bundle

    bundle = load_bundle(path)
    size = os.path.getsize(path)
    counts: dict[str, int] = {}
    for e in bundle.manifest:
        counts[e.storage] = counts.get(e.storage, 0) + 1
    return {
        "path": path,
        "mode": bundle.mode,
        "rank": bundle.config.rank,
        "generator": bundle.spec.to_dict(),
        "tensors": counts,
        "parameters": bundle.num_params,
        "stored_numbers": bundle.stored_numbers,
        "bundle_bytes": size,
        "reconstructed_bytes": bundle.reconstructed_nbytes,
        "ratio": round(bundle.reconstructed_nbytes / size, 2),
        "base": None if bundle.base is None else bundle.base.to_json(),
    }


def _inspect(args: argparse.Namespace) -> int:
    info = _summary(args.bundle)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    g = info["generator"]
    print(f"{info['path']}: MCNC bundle, mode {info['mode']}, rank {info['rank']}")
    print(f"  generator   v{g['version']} ({g['init']}) k={g['k']} chunk_size={g['chunk_size']} width={g['width']} "
          f"depth={g['depth']} bound={g['bound']} seed={g['seed']}")  # fmt: skip
    print(f"  tensors     {info['tensors']}")
    print(f"  parameters  {info['parameters']:,} from {info['stored_numbers']:,} stored numbers")
    print(f"  size        {info['bundle_bytes']:,} B bundle -> {info['reconstructed_bytes']:,} B weights "
          f"({info['ratio']}x)")  # fmt: skip
    if info["base"]:
        print(f"  base        {info['base']['name'] or '(unnamed)'} sha256:{info['base']['sha256']}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from mcnc_core.bundle import load_bundle
    from mcnc_core.errors import FingerprintMismatchError
    from mcnc_core.reconstruct import iter_reconstruct

    bundle = load_bundle(args.bundle)
    base = None
    if args.base:
        from safetensors.torch import load_file

        base = load_file(args.base)
    start = time.perf_counter()
    n = 0
    try:
        for _name, t in iter_reconstruct(bundle, base=base, device=args.device, verify=True):
            n += t.numel()
    except FingerprintMismatchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    secs = time.perf_counter() - start
    result = {"ok": True, "parameters": n, "seconds": round(secs, 4), "device": args.device}
    print(
        json.dumps(result)
        if args.json
        else f"OK: {n:,} parameters match the fingerprint ({secs:.3f} s on {args.device})"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcnc", description="MCNC compressed models: inspect, verify, serve, share.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", help="show a bundle's mode, generator, parameters, ratio and base")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("verify", help="reconstruct a bundle and check it against its fingerprint")
    p.add_argument("bundle")
    p.add_argument("--base", help="delta bundles: the base as a safetensors file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_verify)
    for ep in sorted(entry_points(group="mcnc.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mcnc_core.errors import MCNCError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (MCNCError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
