"""The ``mcnc`` command: core subcommands (``inspect``, ``verify``, ``convert``) plus those that installed
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


def _budget(text: str) -> int:
    """``"1638"``, ``"10k"``, ``"2.5k"``, ``"1m"`` -> stored numbers."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"budget must be a number of stored numbers (1638, 10k), got {text!r}"
        ) from None
    if not 1 <= value < 2**63 or value != int(value):
        raise argparse.ArgumentTypeError(f"budget must be a positive whole number, got {text!r}")
    return int(value)


def _convert(args: argparse.Namespace) -> int:
    import torch

    from mcnc_core import MCNCConfig, save_bundle
    from mcnc_core.convert import CONVERT_METADATA_KEY, convert_peft
    from mcnc_core.convert_io import load_base, load_tokenizer, read_inputs
    from mcnc_core.peft_reader import read_adapter_config

    adapter_config = read_adapter_config(args.adapter_dir)  # refuse DoRA, bias ... before loading the base
    torch.manual_seed(args.seed)
    base = load_base(args.base, config=args.config, task_type=adapter_config.get("task_type"))
    tokenizer = load_tokenizer(args.tokenizer or args.base)
    batches = read_inputs(args.data, tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    config = MCNCConfig(mode="delta", k=args.k, rank=args.rank, seed=args.seed, init_seed=args.seed,
                        base_name=args.base_name)  # fmt: skip
    bundle = convert_peft(base, args.adapter_dir, batches, config, steps=args.steps, lr=args.lr, loss=args.loss,
                          budget=args.budget, warm_start=args.warm_start,
                          progress=False if args.no_progress else None)  # fmt: skip
    size = save_bundle(bundle, args.output)
    info = json.loads(bundle.metadata[CONVERT_METADATA_KEY])
    result = {"output": args.output, "bytes": size, "stored_numbers": bundle.stored_numbers,
              "k": bundle.config.k, "chunk_size": bundle.config.chunk_size, "rank": bundle.config.rank,
              "base_sha256": bundle.base.sha256 if bundle.base else None, **info}  # fmt: skip
    cfg = bundle.config
    text = (
        f"wrote {args.output}: {bundle.stored_numbers:,} stored numbers (adapter: {info['adapter_numbers']:,}), "
        f"k={cfg.k} chunk_size={cfg.chunk_size} rank={cfg.rank}; "
        f"{info['loss']} gap {info['gap_start']:.4g} -> {info['gap_end']:.4g}; {info['seconds']:.1f} s"
    )
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
    p = sub.add_parser(
        "convert",
        help="distil a PEFT LoRA adapter into a delta bundle of a stored-number budget",
        description="Train a delta bundle of BASE to reproduce BASE + the PEFT LoRA adapter on unlabeled inputs "
        "(logit KL for language models, output MSE otherwise). BASE is read from local files only and not "
        "changed; the bundle references it by digest.",
        epilog="examples:\n  mcnc convert lora/ --base llama/ --data prompts.txt --budget 10k -o lora.mcnc\n"
        "  mcnc convert lora/ --base base.safetensors --config config.json --data ids.safetensors --budget 1638 "
        "-o lora.mcnc",
        formatter_class=raw,
    )
    p.add_argument(
        "adapter_dir", help="a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)"
    )
    p.add_argument("--base", required=True, help="a from_pretrained directory, or a safetensors file with --config")
    p.add_argument("--config", help="config.json of the model when --base is a safetensors file")
    p.add_argument("--tokenizer", help="a tokenizer directory for text --data (default: the --base directory)")
    p.add_argument("--data", required=True, help="unlabeled inputs: text (one example a line) or a safetensors "
                   "file of input_ids [+ attention_mask]")  # fmt: skip
    p.add_argument("--budget", required=True, type=_budget, help="stored numbers of the bundle (1638, 10k)")
    p.add_argument("-o", "--output", required=True, help="the .mcnc bundle to write")
    p.add_argument("--steps", type=int, default=500, help="distillation steps (default 500)")
    p.add_argument("--lr", type=float, help="code learning rate (default: the recipe's delta-mode rate)")
    p.add_argument("--loss", choices=["auto", "kl", "mse"], default="auto")
    p.add_argument("--k", type=int, default=8, help="code dimension (lowered only if the budget needs it)")
    p.add_argument("--rank", type=int, default=0, help="rank of the factors (default: the adapter's)")
    p.add_argument("--warm-start", type=int, default=0, help="steps fitting the codes to the adapter's weights first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text example (truncated)")
    p.add_argument("--seed", type=int, default=0, help="generator and code seed")
    p.add_argument("--base-name", help="a human name for the base, recorded in the bundle")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="machine-readable output (strict JSON)")
    p.set_defaults(func=_convert)
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
