"""``mcnc serve`` and ``mcnc db upgrade``: the ``mcnc.commands`` entry point, and ``python -m service``.

Contract with the ``mcnc`` dispatcher: ``register(subparsers)`` adds the ``serve`` and ``db``
subparsers and sets ``func`` (``args.func(args) -> int`` is the exit status).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["add_serve_arguments", "db_upgrade", "main", "register", "serve"]


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
    from service.errors import InsecureBindError, StoreConfigError
    from service.http_server import uvicorn_options
    from service.main import create_app
    from service.storage import Store

    overrides: dict[str, Any] = {}
    for field in ("host", "port", "data_dir"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(**overrides)
        app = create_app(settings)  # logs a WARNING when MCNC_ALLOW_INSECURE lets it bind
        # Open the stores once before binding: a bad URL, a missing bucket or a schema that needs
        # `mcnc db upgrade` is one clear line and exit status 2, not a traceback from the lifespan.
        Store.open(settings).close()
    except (InsecureBindError, StoreConfigError, ValueError) as exc:
        print(f"mcnc serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, **uvicorn_options(settings))
    return 0


def db_upgrade(args: argparse.Namespace) -> int:
    """Apply pending schema migrations to the server's database (MCNC_DATABASE_URL, else the embedded one)."""
    from service.config import Settings
    from service.storage import migrate

    overrides: dict[str, Any] = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    try:
        settings = Settings(**overrides)
        url = settings.resolved_database_url()
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        before, after = migrate.upgrade(url)
    except Exception as exc:  # a bad URL or an unreachable database: one line, status 1
        print(f"mcnc db upgrade: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)
    done = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
    print(f"{shown}: {done} revision {after}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``db upgrade`` to the ``mcnc`` command (entry-point group ``mcnc.commands``)."""
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
    db = subparsers.add_parser("db", help="the server's metadata database", description="Manage the server's database.")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    up = db_commands.add_parser("upgrade", help="apply pending schema migrations", description=db_upgrade.__doc__)
    up.add_argument("--database-url", default=None, help="SQLAlchemy URL (env MCNC_DATABASE_URL)")
    up.add_argument("--data-dir", default=None, help="for the embedded SQLite default (env MCNC_DATA_DIR)")
    up.set_defaults(func=db_upgrade)


def main(argv: list[str] | None = None) -> int:
    """``python -m service [--host H] [--port P] [--data-dir D]``."""
    parser = argparse.ArgumentParser(prog="python -m service", description="Run the MCNC reconstruction server.")
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv))
