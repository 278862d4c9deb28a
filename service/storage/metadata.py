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

Hub repos (``service/hub``): a tag's sidecar files are written in the transaction that moves the
tag and define its commit id together with the digest (``refs.commit_id``), so a revision, its
files and its commit never disagree. A name is either a bundle repo (tags) or a named base, never
both. ``main`` (``main_tag``) is the tag called ``main`` if the name has one, else the tag pushed
most recently. The Hub listing's keyset reads are ``ListingQueries`` (``listing.py``).
"""

from __future__ import annotations

import dataclasses
import json
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

from service.errors import (
    BaseNotFoundError,
    BundleNotFoundError,
    ConflictError,
    InvalidRequestError,
    StorageUnavailableError,
    StoreConfigError,
)
from service.storage import migrate
from service.storage.hub_state import HubStateQueries
from service.storage.listing import ListingQueries
from service.storage.refs import BaseNameRecord, BaseRecord, BundleRecord, FileRecord, Ref, TagRecord, commit_id
from service.storage.schema import base_files, base_names, bases, bundles, files, tag_files, tags

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


class MetadataStore(ListingQueries, HubStateQueries):
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

    def main_tag(self, name: str) -> TagRecord | None:
        """The Hub's ``main`` of ``name``: its tag ``main`` if it has one, else its most recently pushed tag."""
        with self._tx(write=False) as conn:
            row = conn.execute(select(tags).where(tags.c.name == name, tags.c.tag == "main")).first()
            if row is None:
                newest = select(tags).where(tags.c.name == name).order_by(tags.c.updated_at.desc(), tags.c.tag)
                row = conn.execute(newest.limit(1)).first()
        return TagRecord(**row._asdict()) if row else None

    def tag_by_commit(self, name: str, commit: str) -> TagRecord | None:
        """A tag of ``name`` whose commit id is ``commit`` (the first by tag order), or None."""
        query = select(tags).where(tags.c.name == name, tags.c.commit == commit).order_by(tags.c.tag).limit(1)
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        return TagRecord(**row._asdict()) if row else None

    def tag_files(self, name: str, tag: str) -> list[FileRecord]:
        """The sidecar files attached to ``name:tag`` (by file name); empty for none or no such tag."""
        query = (
            select(tag_files.c.filename, tag_files.c.sha256, files.c.size, files.c.oid)
            .join(files, files.c.sha256 == tag_files.c.sha256)
            .where(tag_files.c.name == name, tag_files.c.tag == tag)
            .order_by(tag_files.c.filename)
        )
        with self._tx(write=False) as conn:
            return [FileRecord(r.filename, r.sha256, r.size, r.oid) for r in conn.execute(query)]

    def get_file(self, sha256: str) -> FileRecord | None:
        """The stored sidecar blob ``sha256`` (``name`` is empty: blobs have none of their own), or None."""
        with self._tx(write=False) as conn:
            row = conn.execute(select(files).where(files.c.sha256 == sha256)).first()
        return FileRecord("", row.sha256, row.size, row.oid) if row else None

    def base_names(self, digest: str) -> list[str]:
        """The repo names the base ``digest`` is registered under (sorted)."""
        query = select(base_names.c.name).where(base_names.c.digest == digest).order_by(base_names.c.name)
        with self._tx(write=False) as conn:
            return [r.name for r in conn.execute(query)]

    def base_name(self, name: str) -> BaseNameRecord | None:
        """The registration of a base under repo name ``name``, or None."""
        with self._tx(write=False) as conn:
            row = conn.execute(select(base_names).where(base_names.c.name == name)).first()
        return BaseNameRecord(**row._asdict()) if row else None

    def base_by_name(self, name: str) -> BaseRecord | None:
        """The base registered under repo name ``name``, or None."""
        query = select(bases).join(base_names, base_names.c.digest == bases.c.digest).where(base_names.c.name == name)
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        return BaseRecord(**row._asdict()) if row else None

    def base_files(self, name: str) -> list[FileRecord]:
        """The sidecar files of the base named ``name`` (by file name)."""
        query = (
            select(base_files.c.filename, base_files.c.sha256, files.c.size, files.c.oid)
            .join(files, files.c.sha256 == base_files.c.sha256)
            .where(base_files.c.name == name)
            .order_by(base_files.c.filename)
        )
        with self._tx(write=False) as conn:
            return [FileRecord(r.filename, r.sha256, r.size, r.oid) for r in conn.execute(query)]

    def list_repo_names(
        self, *, limit: int, after: str | None = None, search: str | None = None, author: str | None = None
    ) -> list[tuple[str, str, float]]:
        """Hub repos in name order: ``(name, "bundles" | "bases", last update)``, at most ``limit``, names
        after ``after`` (the cursor), containing ``search`` (any case), in org ``author``. Two keyset
        queries (tag names grouped, base names), merged: no OFFSET, however many names there are."""

        def where(col: Any) -> list[Any]:
            conds = []
            if after is not None:
                conds.append(col > after)
            if search:
                escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                conds.append(col.ilike(f"%{escaped}%", escape="\\"))
            if author:
                conds.append(col.startswith(author + "/", autoescape=True))
            return conds

        named = (
            select(tags.c.name, func.max(tags.c.updated_at).label("updated"))
            .where(*where(tags.c.name))
            .group_by(tags.c.name)
            .order_by(tags.c.name)
            .limit(limit)
        )
        based = select(base_names.c.name, base_names.c.updated_at).where(*where(base_names.c.name))
        based = based.order_by(base_names.c.name).limit(limit)
        with self._tx(write=False) as conn:
            rows = [(r[0], "bundles", float(r[1])) for r in conn.execute(named)]
            rows += [(r[0], "bases", float(r[1])) for r in conn.execute(based)]
        return sorted(rows)[:limit]

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
        self,
        rec: BundleRecord,
        *,
        tag: tuple[str, str] | None,
        before_commit: Callable[[], None],
        files: dict[str, str] | None = None,
    ) -> tuple[BundleRecord, bool]:
        """Insert ``rec`` unless its digest is stored, point ``tag`` (name, tag) at it, in one transaction.

        ``before_commit`` runs with the bundle's row locked (after the insert, before the tag move).
        ``files`` (file name -> sha256 of a stored file) become the tag's sidecar files, replacing
        those it had: a push defines the revision (its commit id covers them).

        Returns:
            The stored record (the first upload's, for a digest stored before) and whether it was inserted.

        Raises:
            InvalidRequestError: a file sha256 that is not stored (upload it with POST /files first).
            ConflictError: the name is a registered base's repo name.
        """
        with self._tx(write=True) as conn:
            if tag is not None:
                self._check_files(conn, files or {})
                if conn.execute(select(base_names.c.name).where(base_names.c.name == tag[0])).first():
                    raise ConflictError(f"{tag[0]!r} is the repo name of a registered base; push under another name")
            row, created = self._insert_locked(conn, bundles, dataclasses.asdict(rec))
            before_commit()
            if tag is not None:
                self._set_tag(conn, tag[0], tag[1], rec.digest, files or {})
        return BundleRecord(**row._asdict()), created

    @staticmethod
    def _check_files(conn: Connection, wanted: dict[str, str]) -> None:
        if not wanted:
            return
        shas = set(wanted.values())
        have = {r.sha256 for r in conn.execute(select(files.c.sha256).where(files.c.sha256.in_(shas)))}
        missing = sorted(f"{n}:{s}" for n, s in wanted.items() if s not in have)
        if missing:
            raise InvalidRequestError(
                f"file {missing[0]} is not stored here: upload its bytes with POST /files first "
                f"({len(missing)} missing)"
            )

    def _set_tag(
        self, conn: Connection, name: str, tag: str, digest: str, attached: dict[str, str] | None = None
    ) -> None:
        now = time.time()
        attached = attached or {}
        commit = commit_id(digest, attached.items())
        conn.execute(delete(tag_files).where(tag_files.c.name == name, tag_files.c.tag == tag))
        ins = self._insert(tags).values(name=name, tag=tag, digest=digest, updated_at=now, commit=commit)
        upsert = ins.on_conflict_do_update(
            index_elements=["name", "tag"], set_={"digest": digest, "updated_at": now, "commit": commit}
        )
        conn.execute(upsert)
        if attached:
            rows = [{"name": name, "tag": tag, "filename": f, "sha256": sha} for f, sha in sorted(attached.items())]
            conn.execute(tag_files.insert(), rows)

    def add_file(self, rec: FileRecord, *, before_commit: Callable[[], None]) -> bool:
        """Record the sidecar blob ``rec.sha256`` unless stored; ``before_commit`` runs with its row locked.

        Returns:
            Whether it was inserted.
        """
        values = {"sha256": rec.sha256, "size": rec.size, "oid": rec.oid, "created_at": time.time()}
        ins = self._insert(files).values(**values).on_conflict_do_nothing(index_elements=["sha256"])
        with self._tx(write=True) as conn:
            created = conn.execute(ins.returning(files.c.sha256)).first() is not None
            conn.execute(select(files.c.sha256).where(files.c.sha256 == rec.sha256).with_for_update()).first()
            before_commit()
        return created

    def set_base_name(self, name: str, digest: str, attached: dict[str, str]) -> BaseNameRecord:
        """Register the stored base ``digest`` under repo name ``name`` with sidecar ``attached``
        (file name -> sha256), replacing an earlier registration of that name.

        Raises:
            BaseNotFoundError: no base ``digest``; InvalidRequestError: a file not stored;
            ConflictError: ``name`` is a bundle repo (it has tags).
        """
        with self._tx(write=True) as conn:
            if conn.execute(select(bases.c.digest).where(bases.c.digest == digest)).first() is None:
                raise BaseNotFoundError(f"no base sha256:{digest}")
            self._check_base_name(conn, name, attached)
            return self._name_base(conn, name, digest, attached)

    def _check_base_name(self, conn: Connection, name: str, attached: dict[str, str]) -> None:
        self._check_files(conn, attached)
        if conn.execute(select(tags.c.name).where(tags.c.name == name).limit(1)).first():
            raise ConflictError(f"{name!r} is a bundle repo (it has tags); register the base under another name")

    def _name_base(self, conn: Connection, name: str, digest: str, attached: dict[str, str]) -> BaseNameRecord:
        now, commit = time.time(), commit_id(digest, attached.items())
        conn.execute(delete(base_files).where(base_files.c.name == name))
        ins = self._insert(base_names).values(name=name, digest=digest, commit=commit, updated_at=now)
        moved = {"digest": digest, "commit": commit, "updated_at": now}
        conn.execute(ins.on_conflict_do_update(index_elements=["name"], set_=moved))
        if attached:
            rows = [{"name": name, "filename": f, "sha256": sha} for f, sha in sorted(attached.items())]
            conn.execute(base_files.insert(), rows)
        return BaseNameRecord(name, digest, commit, now)

    def mark_verified(self, digest: str, when: float) -> None:
        """Record that ``digest``'s reconstruction matched its fingerprint at ``when`` (no-op if gone)."""
        with self._tx(write=True) as conn:
            conn.execute(update(bundles).where(bundles.c.digest == digest).values(verified_at=when))

    def mark_failed(self, digest: str, when: float, code: str, message: str) -> None:
        """Record that ``digest``'s reconstruction failed its fingerprint at ``when``, with the error
        ``code`` and ``message`` the routes answer (no-op if gone)."""
        error = json.dumps({"code": code, "message": message})
        with self._tx(write=True) as conn:
            conn.execute(
                update(bundles)
                .where(bundles.c.digest == digest)
                .values(verification_failed_at=when, verification_error=error)
            )

    def awaiting_verification(self, base_digest: str, limit: int = 1000) -> list[BundleRecord]:
        """Stored deltas on ``base_digest`` never checked: no pass and no failure recorded."""
        query = (
            select(bundles)
            .where(
                bundles.c.base_sha256 == base_digest,
                bundles.c.verified_at.is_(None),
                bundles.c.verification_failed_at.is_(None),
            )
            .order_by(bundles.c.created_at)
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            return [BundleRecord(**row._asdict()) for row in conn.execute(query)]

    def add_base(
        self,
        rec: BaseRecord,
        *,
        before_commit: Callable[[], None],
        name: str | None = None,
        files: dict[str, str] | None = None,
    ) -> tuple[BaseRecord, bool]:
        """Insert ``rec`` unless its digest is stored; ``before_commit`` runs with the row locked. With
        ``name``, also register the base under that repo name with sidecar ``files`` (as
        ``set_base_name``: a registration of that name moves here) in the same transaction.

        Returns:
            The stored record and whether it was inserted.

        Raises:
            InvalidRequestError: a file not stored; ConflictError: ``name`` is a bundle repo. Nothing is
            written then.
        """
        with self._tx(write=True) as conn:
            if name is not None:
                self._check_base_name(conn, name, files or {})
            row, created = self._insert_locked(conn, bases, dataclasses.asdict(rec))
            before_commit()
            if name is not None:
                self._name_base(conn, name, rec.digest, files or {})
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
