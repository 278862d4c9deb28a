"""``mcnc push | pull | cache`` (registered into the ``mcnc`` command via ``mcnc.commands``).

Exit codes: 0 success, 1 integrity/verification failure, 2 bad usage or input, 3 server or
network error, 4 not found (locally offline, or on the server).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EXIT_OK, EXIT_INTEGRITY, EXIT_BAD_INPUT, EXIT_SERVER, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


def _client(args: argparse.Namespace) -> Any:
    from client import Client

    return Client(args.endpoint, token=args.token, cache_dir=args.cache_dir, offline=args.offline or None,
                  progress=False if args.json else None)  # fmt: skip


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _push(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = c.push(args.bundle, name=args.name, tag=args.tag)
    verb = "stored" if info.created else "already stored"
    _emit(args, info.__dict__, f"{verb}: {info.digest} ({info.size:,} B, {info.num_params:,} parameters, "
                               f"{info.compression_ratio:.1f}x)")  # fmt: skip
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    if args.format == "peft":
        if args.server_side:
            raise ValueError("--format peft exports locally from the bundle; drop --server-side")
        with _client(args) as c:
            c.download_adapter(args.ref, args.output, dtype=args.dtype or "bfloat16")
            report = c.last_report
        _emit(args, {**report.__dict__, "output": args.output}, f"{args.output}/: PEFT adapter of {report.digest[:12]}")
        return EXIT_OK
    with _client(args) as c:
        if args.server_side:
            report = c.download_weights(args.ref, args.output, dtype=args.dtype)
        else:
            state = c.load(args.ref, device=args.device, dtype=args.dtype)
            tmp = Path(f"{args.output}.incomplete")
            save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))
            tmp.replace(args.output)
            report = c.last_report
    _emit(args, {**report.__dict__, "saving": report.saving, "output": args.output}, f"{args.output}: {report}")
    return EXIT_OK


def _cache(args: argparse.Namespace) -> int:
    from client._cache import LocalCache
    from client._config import resolve_config

    cfg = resolve_config(None, None, args.cache_dir, True, None, False, 0)
    cache = LocalCache(cfg.cache_dir)
    if args.cache_command == "ls":
        entries = cache.entries()
        rows = [e.__dict__ for e in entries]
        text = "\n".join(f"{e.digest[:16]}  {e.kind:<11} {e.size:>12,} B  {' '.join(e.refs)}" for e in entries)
        _emit(args, {"root": str(cache.root), "entries": rows}, text or f"(empty cache at {cache.root})")
        return EXIT_OK
    if args.cache_command == "rm":
        removed = cache.remove(args.target)
        _emit(args, {"removed": removed}, "\n".join(removed) or f"nothing matched {args.target!r}")
        return EXIT_OK if removed else EXIT_NOT_FOUND
    removed = cache.prune(
        max_bytes=args.max_bytes, older_than=args.older_than_days * 86400 if args.older_than_days else None
    )
    _emit(args, {"removed": removed}, f"removed {len(removed)} entries")
    return EXIT_OK


def _wrap(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from client import (
            AdapterExportError,
            APIError,
            ConnectionFailedError,
            IntegrityError,
            NotFoundError,
            OfflineError,
        )

        try:
            return int(func(args))
        except IntegrityError as exc:
            print(f"integrity error: {exc}", file=sys.stderr)
            return EXIT_INTEGRITY
        except AdapterExportError as exc:
            print(f"not an adapter: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except (NotFoundError, OfflineError) as exc:
            print(f"not found: {exc}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except (APIError, ConnectionFailedError) as exc:
            print(f"server error: {exc}", file=sys.stderr)
            return EXIT_SERVER
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return run


def register(sub: Any) -> None:
    """Add ``push``, ``pull`` and ``cache`` to the ``mcnc`` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", help="server URL (default MCNC_ENDPOINT)")
    common.add_argument("--token", help="bearer token (default MCNC_TOKEN)")
    common.add_argument("--cache-dir", help="local cache (default MCNC_CACHE_DIR)")
    common.add_argument("--offline", action="store_true", help="use the cache only (MCNC_OFFLINE)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("push", parents=[common], help="upload a bundle")
    p.add_argument("bundle")
    p.add_argument("--name")
    p.add_argument("--tag")
    p.set_defaults(func=_wrap(_push))

    p = sub.add_parser("pull", parents=[common], help="fetch a model's weights (or a delta's PEFT adapter)")
    p.add_argument("ref")
    p.add_argument("-o", "--output", required=True, help="safetensors file, or directory with --format peft")
    p.add_argument(
        "--format",
        choices=["safetensors", "peft"],
        default="safetensors",
        help="safetensors: full weights; peft: a delta bundle as a LoRA adapter directory (no base needed)",
    )
    p.add_argument("--server-side", action="store_true", help="stream weights reconstructed by the server")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (peft: default bfloat16)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_wrap(_pull))

    p = sub.add_parser("cache", help="inspect or clean the local cache")
    cs = p.add_subparsers(dest="cache_command", required=True)
    cs.add_parser("ls", parents=[common], help="list cached blobs")
    rm = cs.add_parser("rm", parents=[common], help="remove a digest (and its refs) or a name[:tag]")
    rm.add_argument("target")
    pr = cs.add_parser("prune", parents=[common], help="drop partial downloads, old or least-recent blobs")
    pr.add_argument("--max-bytes", type=int)
    pr.add_argument("--older-than-days", type=float)
    p.set_defaults(func=_wrap(_cache))
