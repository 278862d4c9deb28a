"""Schema migrations (Alembic): ``upgrade(url)`` for ``mcnc db upgrade``, ``ensure_current`` at start.

The migration scripts ship inside the package (``service/storage/migrations``) and are configured
here, without an ``alembic.ini``, so an installed server can migrate its own database.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import make_url

from service.errors import SchemaOutOfDateError

__all__ = ["current_revision", "ensure_current", "head_revision", "upgrade"]

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection  # env.py runs on the caller's connection
    return cfg


def head_revision() -> str:
    """The newest revision this server's code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str) -> tuple[str | None, str]:
    """Apply every pending migration to the database at ``url``; ``(revision before, revision after)``."""
    engine = create_engine(make_url(url))
    try:
        with engine.begin() as conn:
            before = current_revision(conn)
            command.upgrade(_config(conn), "head")
            return before, head_revision()
    finally:
        engine.dispose()


def ensure_current(conn: Connection, *, upgrade: bool) -> None:
    """Check (or with ``upgrade``, bring) the schema to this server's head revision.

    A database without a revision that already holds the tables of a server older than the
    migrations is adopted by the first migration (it creates only what is missing).

    Raises:
        SchemaOutOfDateError: the schema is behind and ``upgrade`` is off, or it is ahead of this
            server (written by a newer version) either way.
    """
    head, current = head_revision(), current_revision(conn)
    if current == head:
        return
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaOutOfDateError(
            f"the database schema is at revision {current!r}, which this server ({head!r}) does not know: "
            "it was migrated by a newer mcnc; upgrade this server"
        )
    if not upgrade:
        raise SchemaOutOfDateError(
            f"the database schema is at revision {current or 'none (empty database)'}, this server needs {head!r}: "
            "run `mcnc db upgrade` (with the same MCNC_DATABASE_URL) before starting the server"
        )
    command.upgrade(_config(conn), "head")
    conn.commit()
