"""Alembic environment: runs migrations on the connection ``service.storage.migrate`` passes in."""

from __future__ import annotations

from alembic import context

from service.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - migrate.py always passes one
    raise RuntimeError("run migrations through `mcnc db upgrade` (service.storage.migrate)")
# SQLite cannot ALTER most things in place: batch mode rebuilds tables for such migrations.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
