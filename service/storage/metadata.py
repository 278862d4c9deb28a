"""``MetadataStore``: bundles, bases and names:tags in any SQLAlchemy database (SQLite or PostgreSQL).

One implementation serves both: the embedded default (``sqlite:///<data dir>/mcnc.sqlite3``) runs
the same statements as a shared PostgreSQL (``postgresql+psycopg://...``), so every test of the
default exercises the scale-out code path.

Writes that must not interleave take a lock on the bundle's row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``) and run the caller's
``before_commit`` hook while holding it. The store that composes metadata and blobs uses that hook
to make blob changes part of the metadata transaction: a delete removes the blob before the row's
removal commits, an upload checks that the blob exists before its row commits, so no interleaving
of uploads and deletes of one digest leaves a row without its blob.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, create_engine, delete, event, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from service.errors import BundleNotFoundError, ConflictError, StorageUnavailableError, StoreConfigError
from service.storage import migrate
from service.storage.refs import BaseRecord, BundleRecord, Ref, TagRecord
from service.storage.schema import bases, bundles, tags

__all__ = ["MetadataStore"]

log = logging.getLogger("mcnc.service.storage")
_INSERT_ATTEMPTS = 5
_SQLITE_BUSY_MS = 30_000  # writers queue behind each other instead of failing with "database is locked"


def _make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and explicit BEGIN [IMMEDIATE]."""
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreConfigError(
                f"MCNC_DATABASE_URL: {backend} is not supported; use sqlite:// or postgresql+psycopg://"
            )
        if backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed)
            _sqlite_events(engine)
        else:
            # pre-ping: a replica survives a database restart without serving one error per stale connection
            engine = create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=8)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreConfigError(f"MCNC_DATABASE_URL {url!r} is not usable: {exc}") from exc
    return engine


def _sqlite_events(engine: Engine) -> None:
    # pysqlite opens transactions lazily and never as IMMEDIATE; take over (SQLAlchemy's documented
    # recipe) so a write transaction holds the write lock from its first statement: two uploads
    # cannot both read "absent" and then race to insert.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("mcnc_write") else "BEGIN")


class MetadataStore:
    """Bundle, base and tag records in the database at ``url``.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://user@host/db``).
        auto_upgrade: apply pending migrations at start (the embedded SQLite default); otherwise an
            out-of-date schema refuses to start.

    Raises:
        StoreConfigError: an unusable URL; ``SchemaOutOfDateError`` when the schema is not current
            and ``auto_upgrade`` is off. Methods raise ``StorageUnavailableError`` (503) when the
            database fails or the store is closed.
    """

    def __init__(self, url: str, *, auto_upgrade: bool) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._closed = False
        try:
            with self.engine.connect() as conn:
                migrate.ensure_current(conn, upgrade=auto_upgrade)
        except DBAPIError as exc:
            self.engine.dispose()
            raise StoreConfigError(f"cannot open the database {make_url(url)!r}: {exc.orig}") from exc
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # transactions
    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        if self._closed:
            raise StorageUnavailableError("the metadata store is closed")
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(mcnc_write=True)
                with conn.begin():
                    yield conn
        except DBAPIError as exc:  # connection lost, server gone, disk full: the store is unavailable
            raise StorageUnavailableError(f"database error: {exc.orig}") from exc

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT (both have ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def _insert_locked(self, conn: Connection, table: Table, values: dict[str, Any]) -> tuple[Row[Any], bool]:
        """Insert ``values`` unless the primary key ``digest`` exists, then lock and return the row (and
        whether it was inserted)."""
        ins = self._insert(table).values(**values).on_conflict_do_nothing(index_elements=["digest"])
        locked = select(table).where(table.c.digest == values["digest"]).with_for_update()
        # PostgreSQL, READ COMMITTED: the insert may see a row that a concurrent delete then removes
        # before our lock is granted (the locking read returns nothing); each retry takes a fresh
        # snapshot, in which the insert succeeds. SQLite's writers are serial: one pass.
        for _ in range(_INSERT_ATTEMPTS):
            # RETURNING yields the row only when inserted (rowcount is not reliable for ON CONFLICT everywhere)
            created = conn.execute(ins.returning(table.c.digest)).first() is not None
            row = conn.execute(locked).first()
            if row is not None:
                return row, created
        raise StorageUnavailableError(f"{table.name} row {values['digest']} kept disappearing under concurrent deletes")

    # reads
    def get_bundle(self, digest: str) -> BundleRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(bundles).where(bundles.c.digest == digest)).first()
        return BundleRecord(**row._asdict()) if row else None

    def get_base(self, digest: str) -> BaseRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(bases).where(bases.c.digest == digest)).first()
        return BaseRecord(**row._asdict()) if row else None

    def get_tag(self, name: str, tag: str) -> TagRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(select(tags).where(tags.c.name == name, tags.c.tag == tag)).first()
        return TagRecord(**row._asdict()) if row else None

    def resolve(self, ref: Ref) -> str | None:
        """The digest of the stored bundle ``ref`` names, or None."""
        if ref.digest is not None:
            return ref.digest if self.get_bundle(ref.digest) else None
        assert ref.name is not None and ref.tag is not None
        rec = self.get_tag(ref.name, ref.tag)
        return rec.digest if rec else None

    def tags_for(self, digest: str, *, limit: int | None = None) -> list[TagRecord]:
        """The names:tags pointing at ``digest`` (ordered by name, tag), the first ``limit`` of them."""
        query = select(tags).where(tags.c.digest == digest).order_by(tags.c.name, tags.c.tag).limit(limit)
        with self._tx(write=False) as conn:
            return [TagRecord(**r._asdict()) for r in conn.execute(query)]

    def tags_named(self, name: str, *, limit: int | None = None, digest: str | None = None) -> list[TagRecord]:
        """The tags of ``name`` in tag order: at most ``limit``, only those pointing at ``digest`` if given."""
        query = select(tags).where(tags.c.name == name)
        if digest is not None:
            query = query.where(tags.c.digest == digest)
        query = query.order_by(tags.c.tag).limit(limit)
        with self._tx(write=False) as conn:
            return [TagRecord(**r._asdict()) for r in conn.execute(query)]

    def newest_tag(self, name: str) -> TagRecord | None:
        """The tag of ``name`` moved last (greatest ``updated_at``; of equal times the greatest tag), or None.

        One query over the name's rows (the primary key's ``name`` prefix), not a load of its tags.
        """
        query = select(tags).where(tags.c.name == name).order_by(tags.c.updated_at.desc(), tags.c.tag.desc()).limit(1)
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        return TagRecord(**row._asdict()) if row else None

    def list_tags(self, *, limit: int, offset: int, digest: str | None = None) -> tuple[list[TagRecord], int]:
        """One page of every name:tag, or of those pointing at ``digest`` (ordered by name, tag), and
        their total count, read together (LIMIT/OFFSET and COUNT in SQL: a bundle may have many tags)."""
        query, count = select(tags), select(func.count()).select_from(tags)
        if digest is not None:
            query, count = query.where(tags.c.digest == digest), count.where(tags.c.digest == digest)
        with self._tx(write=False) as conn:
            page = [
                TagRecord(**r._asdict())
                for r in conn.execute(query.order_by(tags.c.name, tags.c.tag).limit(limit).offset(offset))
            ]
            total = conn.execute(count).scalar_one()
        return page, int(total)

    # writes
    def add_bundle(
        self, rec: BundleRecord, *, tag: tuple[str, str] | None, before_commit: Callable[[], None]
    ) -> tuple[BundleRecord, bool]:
        """Insert ``rec`` unless its digest is stored, point ``tag`` (name, tag) at it, in one transaction.

        ``before_commit`` runs with the bundle's row locked (after the insert, before the tag move).

        Returns:
            The stored record (the first upload's, for a digest stored before) and whether it was inserted.
        """
        with self._tx(write=True) as conn:
            row, created = self._insert_locked(conn, bundles, dataclasses.asdict(rec))
            before_commit()
            if tag is not None:
                self._set_tag(conn, tag[0], tag[1], rec.digest)
        return BundleRecord(**row._asdict()), created

    def _set_tag(self, conn: Connection, name: str, tag: str, digest: str) -> None:
        now = time.time()
        ins = self._insert(tags).values(name=name, tag=tag, digest=digest, updated_at=now)
        upsert = ins.on_conflict_do_update(index_elements=["name", "tag"], set_={"digest": digest, "updated_at": now})
        conn.execute(upsert)

    def mark_verified(self, digest: str, when: float) -> None:
        """Record that ``digest``'s reconstruction matched its fingerprint at ``when`` (no-op if gone)."""
        with self._tx(write=True) as conn:
            conn.execute(update(bundles).where(bundles.c.digest == digest).values(verified_at=when))

    def add_base(self, rec: BaseRecord, *, before_commit: Callable[[], None]) -> tuple[BaseRecord, bool]:
        """Insert ``rec`` unless its digest is stored; ``before_commit`` runs with the row locked."""
        with self._tx(write=True) as conn:
            row, created = self._insert_locked(conn, bases, dataclasses.asdict(rec))
            before_commit()
        return BaseRecord(**row._asdict()), created

    def delete_tag(self, name: str, tag: str) -> TagRecord | None:
        """Remove ``name:tag``; the removed record, or None if there was none."""
        with self._tx(write=True) as conn:
            row = conn.execute(delete(tags).where(tags.c.name == name, tags.c.tag == tag).returning(*tags.c)).first()
        return TagRecord(**row._asdict()) if row else None

    def delete_bundle(self, digest: str, *, force: bool, before_commit: Callable[[], None]) -> None:
        """Remove a bundle's tags and row; ``before_commit`` (the blob's removal) runs with the row locked.

        Raises:
            BundleNotFoundError: no such bundle.
            ConflictError: names point at it and ``force`` is off (nothing is changed).
        """
        with self._tx(write=True) as conn:
            found = conn.execute(select(bundles.c.digest).where(bundles.c.digest == digest).with_for_update()).first()
            if found is None:
                raise BundleNotFoundError(f"no bundle sha256:{digest}")
            named = select(tags).where(tags.c.digest == digest).order_by(tags.c.name, tags.c.tag).limit(10)
            names = [f"{r.name}:{r.tag}" for r in conn.execute(named)]
            if names and not force:
                raise ConflictError(
                    f"bundle is still named by {', '.join(names)}; remove those names or pass force=true"
                )
            conn.execute(delete(tags).where(tags.c.digest == digest))
            conn.execute(delete(bundles).where(bundles.c.digest == digest))
            before_commit()

    # lifecycle
    def ping(self) -> None:
        """Raises StorageUnavailableError unless the database answers."""
        with self._tx(write=False) as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self._closed = True
        self.engine.dispose()
