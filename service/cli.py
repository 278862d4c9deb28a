"""``mcnc serve``: the ``mcnc.commands`` entry point, and ``python -m service``.

Contract with the ``mcnc`` dispatcher: ``register(subparsers)`` adds the ``serve`` subparser and
sets ``func`` (``args.func(args) -> int`` is the exit status).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["add_serve_arguments", "main", "register", "serve"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port``, ``--data-dir``, ``--log-level``; unset options fall back to ``MCNC_*``."""
    parser.add_argument("--host", default=None, help="bind address (env MCNC_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (env MCNC_PORT, default 8000)")
    parser.add_argument("--data-dir", default=None, help="bundle/base store (env MCNC_DATA_DIR)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def serve(args: argparse.Namespace) -> int:
    """Validate settings, refuse an insecure bind, then run uvicorn until interrupted."""
    import uvicorn  # heavy imports only when serving

    from service.config import Settings
    from service.errors import InsecureBindError
    from service.main import create_app

    overrides: dict[str, Any] = {}
    for field in ("host", "port", "data_dir"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    try:
        settings = Settings(**overrides)
        app = create_app(settings)
    except (InsecureBindError, ValueError) as exc:
        print(f"mcnc serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, proxy_headers=False)
    return 0


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``mcnc`` command (entry-point group ``mcnc.commands``)."""
    parser = subparsers.add_parser(
        "serve",
        help="run the reconstruction server",
        description="Run the MCNC server (uvicorn): bundles, server-side weights, the Hub-compatible adapter "
        "API, OpenAPI at /docs. Settings are MCNC_* variables (docs/service.md); without API tokens it binds "
        "to loopback only.",
        epilog="examples:\n  mcnc serve --data-dir ./data\n"
        '  MCNC_API_TOKENS=\'{"s3cret": ["read", "write", "admin"]}\' mcnc serve --host 0.0.0.0',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(parser)
    parser.set_defaults(func=serve)


def main(argv: list[str] | None = None) -> int:
    """``python -m service [--host H] [--port P] [--data-dir D]``."""
    parser = argparse.ArgumentParser(prog="python -m service", description="Run the MCNC reconstruction server.")
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv))
