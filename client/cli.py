"""``mcnc push | pull | push-base | ls | info | rm | login | logout | cache`` (registered into the
``mcnc`` command via ``mcnc.commands``).

Registering imports nothing heavy (``mcnc --help`` stays fast); each command imports the client
when it runs, torch only when it reconstructs. Exit codes are ``mcnc_core.cli``'s: 0 success,
1 integrity failure, 2 bad usage or input, 3 server refused or unreachable, 4 not found (on the
server, or not in the cache in offline mode). Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcnc_core.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_VERIFY_FAILED, fail, to_json

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTEGRITY", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_SERVER", "register"]

EXIT_INTEGRITY, EXIT_SERVER, EXIT_NOT_FOUND = EXIT_VERIFY_FAILED, 3, 4
_RAW = argparse.RawDescriptionHelpFormatter


def _client(args: argparse.Namespace) -> Any:
    from client import Client

    return Client(
        args.endpoint,
        token=args.token,
        cache_dir=args.cache_dir,
        offline=args.offline or None,
        progress=False if args.json else None,
    )


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(to_json(data) if args.json else text)


def _upload_plan(
    path: Path, files: list[str] | None, name: str | None, *, base: bool
) -> tuple[Path, list[Path], list[str]]:
    """What ``push``/``push-base`` sends, checked locally before any request: the file (a DIR's one
    bundle or base), the sidecars (DIR's by the rule of ``client/_uploads.py``, then each ``--file``)
    and what DIR held that is left out."""
    from client._uploads import check_base_file, check_bundle_file, scan_base_dir, scan_bundle_dir

    explicit = [Path(f) for f in files or []]
    if path.is_dir():
        found = scan_base_dir(path, name) if base else scan_bundle_dir(path, name)
        return found.main, [*found.sidecars, *explicit], found.left_out
    return (check_base_file(path, name) if base else check_bundle_file(path, name)), explicit, []


def _files_text(sidecars: list[Path], left_out: list[str]) -> str:
    text = f"; files: {', '.join(p.name for p in sidecars)}" if sidecars else ""
    return text + (f"; left out (not sidecars): {', '.join(left_out)}" if left_out else "")


def _push(args: argparse.Namespace) -> int:
    bundle, sidecars, left_out = _upload_plan(Path(args.bundle), args.file, args.name, base=False)
    with _client(args) as c:
        info = c.push(bundle, name=args.name, tag=args.tag, files=sidecars)
    verb = "stored" if info.created else "already stored"
    named = f" as {args.name}:{args.tag or 'latest'}" if args.name else ""
    files = [p.name for p in sidecars]
    _emit(
        args,
        {**vars(info), "bundle": str(bundle), "files": files, "left_out": left_out},
        f"{verb}{named}: {info.digest} ({info.size:,} B, {info.num_params:,} parameters, "
        f"{info.compression_ratio:.1f}x){_files_text(sidecars, left_out)}",
    )
    return EXIT_OK


def _push_base(args: argparse.Namespace) -> int:
    base, sidecars, left_out = _upload_plan(Path(args.base), args.file, args.name, base=True)
    with _client(args) as c:
        info = c.push_base(base, name=args.name, files=sidecars)
    named = f" as {info.name} (commit {info.commit})" if info.name else ""
    _emit(
        args,
        {**vars(info), "base_file": str(base), "left_out": left_out},
        f"base registered{named}: sha256:{info.digest} ({info.num_tensors} tensors, {info.size:,} B)"
        f"{_files_text(sidecars, left_out)}",
    )
    return EXIT_OK


def _save_state(state: dict[str, Any], output: Path) -> None:
    """Write ``state`` as safetensors to ``output`` atomically (``.incomplete`` then rename)."""
    from safetensors.torch import save_file

    tmp = Path(f"{output}.incomplete")
    try:
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp))
    except Exception as exc:  # safetensors raises its own error type for I/O failures
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write {output}: {exc}") from exc
    tmp.replace(output)


def _local_base(path: str) -> dict[str, Any]:
    """``pull --base FILE``: the base's tensors, read before any request (the client checks them
    against the delta's base digest before reconstructing)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--base {path}: no such file (the base as one safetensors file)")
    try:
        return load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ValueError(f"--base {path} is not a readable safetensors file: {exc}") from exc


def _pull(args: argparse.Namespace) -> int:
    from client import BaseNotFoundError

    output = Path(args.output)
    if args.base is not None and (args.server_side or args.format == "peft"):
        what = "--server-side streams what the server reconstructs" if args.server_side else "a PEFT adapter needs none"
        raise ValueError(f"--base is for local reconstruction of a delta: {what}; drop --base")
    if args.format == "peft":
        if args.server_side:
            raise ValueError("--format peft exports locally from the bundle; drop --server-side")
        with _client(args) as c:
            c.download_adapter(args.ref, output, dtype=args.dtype or "bfloat16")
            report = c.last_report
        _emit(args, {**vars(report), "output": str(output)}, f"{output}/: PEFT adapter of {report.digest[:12]}")
        return EXIT_OK
    output.parent.mkdir(parents=True, exist_ok=True)  # before any download: a bad path fails first
    base = _local_base(args.base) if args.base is not None else None  # a bad --base too
    with _client(args) as c:
        if args.server_side:
            report = c.download_weights(args.ref, output, dtype=args.dtype)
        else:
            try:
                state = c.load(args.ref, device=args.device, dtype=args.dtype, base=base)
            except BaseNotFoundError as exc:
                raise exc.with_hint(f"or here: mcnc pull {args.ref} --base BASE.safetensors -o {output}") from exc
            _save_state(state, output)
            report = c.last_report
    _emit(args, {**vars(report), "saving": report.saving, "output": str(output)}, f"{output}: {report}")
    return EXIT_OK


def _ls(args: argparse.Namespace) -> int:
    import datetime

    with _client(args) as c:
        tags = c.list(limit=args.limit)
    rows = []
    for t in tags:
        when = datetime.datetime.fromtimestamp(t.updated_at).isoformat(" ", "seconds")
        rows.append(f"{t.name + ':' + t.tag:<40} {t.digest.removeprefix('sha256:')[:16]}  {when}")
    _emit(args, {"endpoint": c.base_url, "items": tags}, "\n".join(rows) or f"(no models on {c.base_url})")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = c.info(args.ref)
        metadata = c.bundle_metadata(args.ref)
    extra = {k: v for k, v in sorted(metadata.items()) if k.startswith("x-")}
    tags = ", ".join(f"{t.name}:{t.tag}" for t in info.tags) or "(none)"
    lines = [
        f"{args.ref}: {info.digest}",
        f"  mode        {info.mode}" + (f", base sha256:{info.base}" if info.base else ""),
        f"  parameters  {info.num_params:,} from {info.stored_numbers:,} stored numbers",
        f"  size        {info.size:,} B bundle -> {info.reconstructed_bytes:,} B weights "
        f"({info.compression_ratio:.1f}x)",
        f"  tags        {tags}",
        f"  loaded      {', '.join(info.loaded) or '(not loaded on the server)'}",
        *(f"  {k:<11} {v}" for k, v in extra.items()),
    ]
    _emit(args, {**vars(info), "metadata": extra}, "\n".join(lines))
    return EXIT_OK


def _rm(args: argparse.Namespace) -> int:
    from mcnc_core.refs import parse_ref

    ref = parse_ref(args.ref)
    with _client(args) as c:
        c.delete(args.ref, force=args.force)
    what = f"bundle {ref}" if ref.digest else f"tag {ref} (the bundle stays)"
    _emit(args, {"deleted": str(ref)}, f"deleted {what} on {c.base_url}")
    return EXIT_OK


def _login(args: argparse.Namespace) -> int:
    from client import AuthenticationError, Client, PermissionDeniedError
    from client._config import token_path

    token = args.token
    if token is None:
        import getpass

        token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token:
        raise ValueError("empty token: pass --token <token> or type it when asked")
    if not (args.no_verify or args.offline):
        with Client(args.endpoint, token=token, offline=False, progress=False) as c:
            try:
                c.list(limit=1)
            except PermissionDeniedError:
                pass  # a write-only token is still a token the server knows
            except AuthenticationError as exc:
                raise exc.with_hint("not saved") from exc
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by its owner only
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)
    shadow = " (MCNC_TOKEN is set and wins over it)" if os.environ.get("MCNC_TOKEN") else ""
    _emit(args, {"token_file": str(path)}, f"token saved to {path}{shadow}")
    return EXIT_OK


def _logout(args: argparse.Namespace) -> int:
    from client._config import token_path

    path = token_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    shadow = "; MCNC_TOKEN is still set in this environment" if os.environ.get("MCNC_TOKEN") else ""
    text = (f"removed {path}" if existed else f"no token file at {path}") + shadow
    _emit(args, {"token_file": str(path), "removed": existed}, text)
    return EXIT_OK


def _cache(args: argparse.Namespace) -> int:
    from client._cache import LocalCache
    from client._config import resolve_config

    cfg = resolve_config(None, None, args.cache_dir, True, None, False, 0)
    cache = LocalCache(cfg.cache_dir)
    if args.cache_command == "ls":
        entries = cache.entries()
        text = "\n".join(f"{e.digest[:16]}  {e.kind:<11} {e.size:>12,} B  {' '.join(e.refs)}" for e in entries)
        _emit(args, {"root": str(cache.root), "entries": entries}, text or f"(empty cache at {cache.root})")
        return EXIT_OK
    if args.cache_command == "rm":
        removed = cache.remove(args.target)
        if not removed:
            return fail("cache rm", "not found", f"nothing in {cache.root} matched {args.target!r}", EXIT_NOT_FOUND)
        _emit(args, {"removed": removed}, "\n".join(removed))
        return EXIT_OK
    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    removed = cache.prune(max_bytes=args.max_bytes, older_than=older)
    _emit(args, {"removed": removed}, f"removed {len(removed)} entries")
    return EXIT_OK


def _wrap(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``func``; turn the client's exceptions into one line on stderr and their exit code."""

    def run(args: argparse.Namespace) -> int:
        from client import (
            AdapterExportError,
            APIError,
            BaseMismatchError,
            ConnectionFailedError,
            InsufficientMemoryError,
            IntegrityError,
            NotFoundError,
            OfflineError,
            StateDictMismatchError,
        )
        from mcnc_core.errors import MCNCError

        try:
            return int(func(args))
        except BaseMismatchError as exc:  # the base the user gave (pull --base) is not the delta's
            return fail(name, "wrong base", exc, EXIT_BAD_INPUT)
        except IntegrityError as exc:
            return fail(name, "integrity error", exc, EXIT_INTEGRITY)
        except AdapterExportError as exc:
            return fail(name, "not an adapter", exc, EXIT_BAD_INPUT)
        except (StateDictMismatchError, InsufficientMemoryError) as exc:
            return fail(name, "error", exc, EXIT_BAD_INPUT)
        except NotFoundError as exc:
            return fail(name, "not found", exc, EXIT_NOT_FOUND)
        except OfflineError as exc:
            return fail(name, "offline", exc, EXIT_NOT_FOUND)
        except ConnectionFailedError as exc:
            return fail(name, "server unreachable", exc, EXIT_SERVER)
        except APIError as exc:
            return fail(name, "server error", exc, EXIT_SERVER)
        except (MCNCError, ValueError, OSError) as exc:
            return fail(name, "error", exc, EXIT_BAD_INPUT)

    return run


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", help="server URL (default MCNC_ENDPOINT, else http://127.0.0.1:8000)")
    common.add_argument("--token", help="bearer token (default MCNC_TOKEN, else the file `mcnc login` writes)")
    common.add_argument("--cache-dir", help="local cache (default MCNC_CACHE_DIR, else $MCNC_HOME/hub)")
    common.add_argument("--offline", action="store_true", help="use the cache only, open no socket (MCNC_OFFLINE)")
    common.add_argument("--json", action="store_true", help="machine-readable output (strict JSON)")
    return common


def _command(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    examples: str,
    description: str | None = None,
    parents: list[argparse.ArgumentParser] | None = None,
) -> Any:
    p = sub.add_parser(
        name,
        parents=parents or [],
        help=help,
        description=description or help[0].upper() + help[1:],
        epilog="examples:\n" + examples,
        formatter_class=_RAW,
    )
    p.set_defaults(func=_wrap(name, func))
    return p


def register(sub: Any) -> None:
    """Add the client's commands to the ``mcnc`` command's subparsers."""
    common = [_common()]
    p = _command(
        sub,
        "push",
        _push,
        "upload a bundle, with sidecar files (checked by the server's strict reader)",
        "  mcnc push mlp.mcnc --name mlp --tag v1\n"
        "  mcnc push tiny.mcnc --name acme/tiny --tag v1 --file config.json --file tokenizer.json\n"
        "  mcnc push model-dir/ --name acme/tiny --tag v1",
        parents=common,
        description="Upload a .mcnc bundle and tag it name:tag. --file attaches a sidecar file (config.json, "
        "tokenizer files, README.md) to the tag, so Hub clients find a whole repo. A directory holding exactly "
        "one .mcnc bundle is pushed with its sidecars: config.json, generation_config.json, "
        "special_tokens_map.json, added_tokens.json, preprocessor_config.json, chat_template.*, README.md, "
        "vocab.*, merges.txt, tokenizer*, *.model, *.tiktoken; other files are left out (and listed). "
        "A PEFT adapter or a plain safetensors file is refused with what to run instead (exit 2).",
    )
    p.add_argument("bundle", help="a .mcnc bundle file, or a directory holding one plus sidecar files")
    p.add_argument("--name", help="name (or org/name) to tag it with")
    p.add_argument("--tag", help="tag (default latest; needs --name)")
    p.add_argument("--file", action="append", metavar="FILE", help="a sidecar file for the tag (repeatable)")

    p = _command(
        sub,
        "push-base",
        _push_base,
        "register a base model (safetensors) for delta bundles, optionally as a named repo",
        "  mcnc push-base llama-base.safetensors\n"
        "  mcnc push-base base.safetensors --name acme/base --file config.json\n"
        "  mcnc push-base base-dir/ --name acme/base",
        parents=common,
        description="Upload the base a delta bundle was trained on, so the server can stream the delta's "
        "full weights (--server-side pulls). It is addressed by its state digest. With --name the server also "
        "serves it as a whole-model Hub repo of that name with the --file sidecars (registering a name again "
        "moves it). A directory holding exactly one .safetensors file is pushed with its sidecars (the rule "
        "of `mcnc push DIR`).",
    )
    p.add_argument("base", help="a safetensors file holding the base's tensors, or a directory holding one")
    p.add_argument("--name", help="repo name (org/name) to serve the base under")
    p.add_argument("--file", action="append", metavar="FILE", help="a sidecar file for the repo (repeatable)")

    p = _command(
        sub,
        "pull",
        _pull,
        "fetch a model's weights (or a delta's PEFT adapter)",
        "  mcnc pull mlp:v1 -o mlp.safetensors\n"
        "  mcnc pull mlp:v1 -o mlp.safetensors --server-side --dtype float16\n"
        "  mcnc pull acme/lora:v1 --format peft -o adapter/\n"
        "  mcnc pull acme/lora:v1 --base base.safetensors -o weights.safetensors",
        parents=common,
        description="Download the bundle (cached by digest) and reconstruct locally, or stream the weights "
        "the server reconstructs (--server-side). A name without a tag means name:latest. When the server "
        "cannot be reached, a cached ref is used with a warning.",
    )
    p.add_argument("ref", help="name, name:tag, org/name:tag or sha256:<digest>")
    p.add_argument("-o", "--output", required=True, help="safetensors file, or directory with --format peft")
    p.add_argument(
        "--format",
        choices=["safetensors", "peft"],
        default="safetensors",
        help="safetensors: full weights; peft: a delta bundle as a LoRA adapter directory (no base needed)",
    )
    p.add_argument("--server-side", action="store_true", help="stream weights reconstructed by the server")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (peft: default bfloat16)")
    p.add_argument("--device", default="cpu", help="where to reconstruct: cpu (default), cuda, cuda:N")
    p.add_argument(
        "--base",
        metavar="FILE",
        help="a delta's base as a local safetensors file (checked by digest; nothing downloaded for it)",
    )

    p = _command(sub, "ls", _ls, "list the names and tags on the server", "  mcnc ls\n  mcnc ls --json", parents=common)
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")

    p = _command(
        sub,
        "info",
        _info,
        "show a stored model: digest, sizes, tags, tiers and x- metadata",
        "  mcnc info mlp:v1\n  mcnc info sha256:3f2a... --json",
        parents=common,
        description="Show what the server knows about a model, and the x- metadata of its bundle (the "
        "bundle is downloaded into the cache to read it: a later pull needs no download).",
    )
    p.add_argument("ref", help="name, name:tag or sha256:<digest>")

    p = _command(
        sub,
        "rm",
        _rm,
        "delete a tag, or a bundle by digest, on the server (admin token)",
        "  mcnc rm mlp:v1\n  mcnc rm sha256:3f2a... --force",
        parents=common,
        description="A name or name:tag removes that tag (the bundle stays while other tags name it); a "
        "digest removes the bundle itself, refused while tags point at it unless --force.",
    )
    p.add_argument("ref", help="name, name:tag or sha256:<digest>")
    p.add_argument("--force", action="store_true", help="with a digest: delete even while tags point at it")

    p = _command(
        sub,
        "login",
        _login,
        "save a token to the token file ($MCNC_HOME/token)",
        "  mcnc login --token s3cret\n  echo s3cret | mcnc login",
        parents=common,
        description="Check a token against the server (unless --no-verify) and save it, readable by you "
        "only, where every client finds it. MCNC_TOKEN and --token win over the file.",
    )
    p.add_argument("--no-verify", action="store_true", help="save without asking the server")

    _command(sub, "logout", _logout, "remove the token file", "  mcnc logout", parents=common)

    p = sub.add_parser(
        "cache",
        help="inspect or clean the local cache",
        formatter_class=_RAW,
        description="The local cache ($MCNC_CACHE_DIR, else $MCNC_HOME/hub): bundles and bases by "
        "digest, the refs that named them, and when each was last used.",
        epilog="examples:\n  mcnc cache ls\n  mcnc cache rm 3f2a9c0d1e2b4a5c\n  mcnc cache rm mlp:v1\n"
        "  mcnc cache prune --max-bytes 1000000000\n  mcnc cache prune --older-than-days 30",
    )
    p.set_defaults(func=_wrap("cache", _cache))
    cs = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cs.add_parser("ls", parents=common, help="list cached blobs (digest prefix, kind, size, refs)")
    rm = cs.add_parser("rm", parents=common, help="remove a blob (digest or the prefix `cache ls` prints) or a ref")
    rm.add_argument("target", help="sha256:<digest>, a unique digest prefix (8+ hex), or name[:tag]")
    pr = cs.add_parser("prune", parents=common, help="drop partial downloads, then old or least recently used blobs")
    pr.add_argument("--max-bytes", type=int, help="evict least recently used blobs until the cache holds this much")
    pr.add_argument("--older-than-days", type=float, help="evict blobs not used for this many days (0: all)")
