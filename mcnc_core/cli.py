"""The ``mcnc`` command: core subcommands (``inspect``, ``verify``) plus those that installed
packages register under the entry-point group ``mcnc.commands`` (``serve``, ``push``, ``pull`` ...).

Building the parser imports neither torch nor FastAPI: ``mcnc --help``, ``--version`` and the
commands that need no model (``cache``, ``ls``, ``login``) start in a fraction of a second; each
command imports what it needs when it runs.

Exit codes (every command; each failure is one line on stderr, ``mcnc <command>: <what>: <message>``):

====  ===================================================================================
0     success
1     integrity: a checksum, size or fingerprint check failed
2     bad usage or input: arguments, a malformed bundle, ref or file, an unwritable output
3     the server: unreachable, refused the request (401/403, 409, 422 ...) or failed (5xx)
4     not found: on the server, or not in the cache in offline mode
130   interrupted (Ctrl-C)
====  ===================================================================================
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from mcnc_core.errors import FingerprintMismatchError, MCNCError  # plain classes: no torch

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_VERIFY_FAILED", "fail", "main", "to_json"]

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

_EPILOG = """examples:
  mcnc serve --data-dir ./data                 run the server on 127.0.0.1:8000
  mcnc push mlp.mcnc --name mlp --tag v1       upload a bundle
  mcnc pull mlp:v1 -o mlp.safetensors          download the bundle, reconstruct locally
  mcnc ls; mcnc info mlp:v1                    what the server holds
  mcnc inspect mlp.mcnc; mcnc verify mlp.mcnc  offline tools
  mcnc cache ls                                the local cache

exit codes: 0 ok, 1 integrity check failed, 2 bad usage or input, 3 server error or unreachable,
4 not found (server, or cache when offline). Client settings: MCNC_ENDPOINT, MCNC_TOKEN,
MCNC_CACHE_DIR, MCNC_OFFLINE (docs/client.md)."""


def to_json(data: Any) -> str:
    """Strict JSON (RFC 8259) for ``--json``: dataclasses as objects, paths as strings, non-finite
    floats as ``null`` (never ``Infinity``), anything else unknown is an error, not a repr."""

    def plain(obj: Any) -> Any:
        import dataclasses
        import math
        import os

        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return plain({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
        if isinstance(obj, dict):
            return {str(k): plain(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if obj is None or isinstance(obj, (str, int, float, bool)):
            return obj
        raise TypeError(f"{type(obj).__name__} is not JSON data")

    return json.dumps(plain(data), indent=2, allow_nan=False)


def fail(command: str, what: str, exc: BaseException | str, code: int) -> int:
    """Print one line ``mcnc <command>: <what>: <message>`` to stderr; return ``code``."""
    message = " ".join(str(exc).split())  # one line, whatever the message held
    print(f"mcnc {command}: {what}: {message}", file=sys.stderr)
    return code


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
        "metadata": dict(bundle.metadata),  # the writer's x- keys
    }


def _inspect(args: argparse.Namespace) -> int:
    info = _summary(args.bundle)
    if args.json:
        print(to_json(info))
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
    for key, value in sorted(info["metadata"].items()):
        print(f"  {key:<11} {value}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from mcnc_core.bundle import load_bundle
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
        return fail("verify", "FAILED", exc, EXIT_VERIFY_FAILED)
    secs = time.perf_counter() - start
    result = {"ok": True, "parameters": n, "seconds": round(secs, 4), "device": args.device}
    text = f"OK: {n:,} parameters match the fingerprint ({secs:.3f} s on {args.device})"
    print(to_json(result) if args.json else text)
    return EXIT_OK


def _version() -> str:
    from mcnc_core import __version__  # the one source of the version (pyproject reads it too)

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``mcnc`` parser with every registered command (imports no torch, no FastAPI)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mcnc",
        description="MCNC compressed models: inspect, verify, serve, share.",
        epilog=_EPILOG,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"mcnc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "inspect",
        help="show a bundle's mode, generator, parameters, ratio, base and x- metadata",
        description="Read a bundle with the strict reader and summarise it (no reconstruction).",
        epilog="example:\n  mcnc inspect mlp.mcnc --json",
        formatter_class=raw,
    )
    p.add_argument("bundle", help="a .mcnc bundle file")
    p.add_argument("--json", action="store_true", help="machine-readable output (strict JSON)")
    p.set_defaults(func=_inspect)
    p = sub.add_parser(
        "verify",
        help="reconstruct a bundle and check it against its fingerprint",
        description="Reconstruct every tensor and check it against the fingerprint the bundle carries "
        "(exit 1 on a mismatch).",
        epilog="examples:\n  mcnc verify mlp.mcnc\n  mcnc verify lora.mcnc --base base.safetensors --device cuda",
        formatter_class=raw,
    )
    p.add_argument("bundle", help="a .mcnc bundle file")
    p.add_argument("--base", help="delta bundles: the base as a safetensors file")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="machine-readable output (strict JSON)")
    p.set_defaults(func=_verify)
    for ep in sorted(entry_points(group="mcnc.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def _show_warning(message: Any, category: Any, *_: Any, **__: Any) -> None:
    print(f"mcnc: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mcnc``; returns the exit status (module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # "mcnc: warning: ...", not a source line
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            return fail(args.command, "interrupted", "stopped by the user", EXIT_INTERRUPTED)
        except FingerprintMismatchError as exc:
            return fail(args.command, "integrity", exc, EXIT_VERIFY_FAILED)
        except (MCNCError, ValueError, OSError) as exc:  # registered commands map their own errors first
            return fail(args.command, "error", exc, EXIT_BAD_INPUT)


if __name__ == "__main__":
    sys.exit(main())
