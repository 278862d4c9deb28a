"""Read-only queries the pages need and the metadata store does not offer: one page of models (one
row per name), a name's tags, the deltas of a base, the bases, server-wide totals.

They read the tables of ``service.storage.schema`` through the store's SQLAlchemy engine, in SQL
(window functions, GROUP BY, LIMIT/OFFSET): no page loads all the names, tags or bundles of a
server. The same statements run on SQLite and PostgreSQL. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, case, distinct, func, literal, select
from sqlalchemy.exc import DBAPIError

from service.errors import StorageUnavailableError
from service.storage import MetadataStore
from service.storage.schema import bases, bundles, tags

__all__ = [
    "SORTS",
    "BaseRow",
    "ModelRow",
    "Sort",
    "TagRow",
    "Totals",
    "base_rows",
    "base_users",
    "head_tag",
    "list_models",
    "list_orgs",
    "name_tags",
    "totals",
]

Sort = Literal["name", "push", "size"]
SORTS: tuple[Sort, ...] = ("name", "push", "size")
_ESCAPE = "\\"


@dataclass(frozen=True)
class ModelRow:
    """One name: its most recently pushed tag and that tag's bundle."""

    name: str
    tag: str
    digest: str
    last_push: float
    tag_count: int
    size: int
    full_bytes: int
    mode: str
    base_name: str | None
    base_sha256: str | None
    verified_at: float | None

    @property
    def saving(self) -> float:
        return self.full_bytes / max(self.size, 1)


@dataclass(frozen=True)
class TagRow:
    name: str
    tag: str
    digest: str
    updated_at: float
    size: int
    full_bytes: int
    mode: str


@dataclass(frozen=True)
class BaseRow:
    """A base digest that is registered, or that deltas name without it being registered."""

    digest: str
    registered: bool
    size: int | None
    num_tensors: int | None
    num_params: int | None
    created_at: float | None
    base_name: str | None  # the name a delta gave it (bundle metadata), if any
    deltas: int


@dataclass(frozen=True)
class Totals:
    bundles: int
    bases: int
    names: int
    bundle_bytes: int
    base_bytes: int
    full_bytes: int

    @property
    def stored_bytes(self) -> int:
        return self.bundle_bytes + self.base_bytes

    @property
    def saving(self) -> float:
        return self.full_bytes / max(self.stored_bytes, 1)


@contextmanager
def _read(meta: MetadataStore) -> Iterator[Connection]:
    try:
        with meta.engine.connect() as conn:
            yield conn
    except DBAPIError as exc:  # the same answer the store gives: 503, not a 500
        raise StorageUnavailableError(f"database error: {exc.orig}") from exc


def _like(text: str) -> str:
    """``text`` with LIKE's wildcards escaped (matched literally)."""
    return text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")


def _filters(q: str | None, org: str | None) -> list:  # type: ignore[type-arg]
    out = []
    if q:
        out.append(func.lower(tags.c.name).like(f"%{_like(q.lower())}%", escape=_ESCAPE))
    if org:
        out.append(tags.c.name.like(f"{_like(org)}/%", escape=_ESCAPE))
    return out


def list_models(
    meta: MetadataStore, *, q: str | None, org: str | None, sort: Sort, limit: int, offset: int
) -> tuple[list[ModelRow], int]:
    """One page of names matching ``q`` (case-insensitive substring) and ``org``, and their count."""
    where = _filters(q, org)
    part = tags.c.name
    ranked = (
        select(
            tags.c.name,
            tags.c.tag,
            tags.c.digest,
            func.row_number().over(partition_by=part, order_by=(tags.c.updated_at.desc(), tags.c.tag)).label("rn"),
            func.max(tags.c.updated_at).over(partition_by=part).label("last_push"),
            func.count().over(partition_by=part).label("tag_count"),
        )
        .where(*where)
        .subquery()
    )
    order = {
        "name": (ranked.c.name,),
        "push": (ranked.c.last_push.desc(), ranked.c.name),
        "size": (bundles.c.size.desc(), ranked.c.name),
    }[sort]
    query = (
        select(
            ranked.c.name,
            ranked.c.tag,
            ranked.c.digest,
            ranked.c.last_push,
            ranked.c.tag_count,
            bundles.c.size,
            bundles.c.reconstructed_nbytes,
            bundles.c.mode,
            bundles.c.base_name,
            bundles.c.base_sha256,
            bundles.c.verified_at,
        )
        .join(bundles, bundles.c.digest == ranked.c.digest)
        .where(ranked.c.rn == 1)
        .order_by(*order)
        .limit(limit)
        .offset(offset)
    )
    count = select(func.count(distinct(tags.c.name))).where(*where)
    with _read(meta) as conn:
        rows = [ModelRow(*r) for r in conn.execute(query)]
        total = int(conn.execute(count).scalar_one())
    return rows, total


def list_orgs(meta: MetadataStore, *, limit: int = 500) -> list[str]:
    """The ``org`` parts of ``org/name`` names, sorted (at most ``limit``)."""
    if meta.dialect == "postgresql":
        org = func.split_part(tags.c.name, "/", 1)
    else:
        org = func.substr(tags.c.name, 1, func.instr(tags.c.name, "/") - 1)
    query = select(org.label("org")).distinct().where(tags.c.name.like("%/%")).order_by("org").limit(limit)
    with _read(meta) as conn:
        return [r[0] for r in conn.execute(query)]


def name_tags(meta: MetadataStore, name: str, *, limit: int) -> tuple[list[TagRow], int]:
    """The tags of ``name``, most recently pushed first (at most ``limit``), and how many it has."""
    query = (
        select(
            tags.c.name,
            tags.c.tag,
            tags.c.digest,
            tags.c.updated_at,
            bundles.c.size,
            bundles.c.reconstructed_nbytes,
            bundles.c.mode,
        )
        .join(bundles, bundles.c.digest == tags.c.digest)
        .where(tags.c.name == name)
        .order_by(tags.c.updated_at.desc(), tags.c.tag)
        .limit(limit)
    )
    count = select(func.count()).select_from(tags).where(tags.c.name == name)
    with _read(meta) as conn:
        rows = [TagRow(*r) for r in conn.execute(query)]
        total = int(conn.execute(count).scalar_one())
    return rows, total


def head_tag(meta: MetadataStore, name: str) -> str | None:
    """The tag a bare ``name`` page shows: the tag named ``main`` if there is one, else the one
    pushed most recently (the Hub's ``main`` rule, docs/service.md)."""
    query = (
        select(tags.c.tag)
        .where(tags.c.name == name)
        .order_by(case((tags.c.tag == "main", 0), else_=1), tags.c.updated_at.desc(), tags.c.tag)
        .limit(1)
    )
    with _read(meta) as conn:
        row = conn.execute(query).first()
    return row[0] if row else None


def base_users(meta: MetadataStore, digest: str, *, limit: int) -> tuple[list[TagRow], int]:
    """The names:tags of delta bundles on base ``digest`` (at most ``limit``) and how many there are."""
    query = (
        select(
            tags.c.name,
            tags.c.tag,
            tags.c.digest,
            tags.c.updated_at,
            bundles.c.size,
            bundles.c.reconstructed_nbytes,
            bundles.c.mode,
        )
        .join(bundles, bundles.c.digest == tags.c.digest)
        .where(bundles.c.base_sha256 == digest)
        .order_by(tags.c.name, tags.c.tag)
        .limit(limit)
    )
    count = select(func.count()).select_from(tags.join(bundles)).where(bundles.c.base_sha256 == digest)
    with _read(meta) as conn:
        rows = [TagRow(*r) for r in conn.execute(query)]
        total = int(conn.execute(count).scalar_one())
    return rows, total


def base_rows(meta: MetadataStore, *, limit: int) -> list[BaseRow]:
    """Registered bases and the base digests deltas name without them being registered, with the
    number of delta bundles on each (registered first, then by digest; at most ``limit`` of each)."""
    users = (
        select(
            bundles.c.base_sha256.label("digest"),
            func.count().label("deltas"),
            func.max(bundles.c.base_name).label("base_name"),
        )
        .where(bundles.c.base_sha256.is_not(None))
        .group_by(bundles.c.base_sha256)
        .subquery()
    )
    registered = (
        select(
            bases.c.digest,
            bases.c.size,
            bases.c.num_tensors,
            bases.c.num_params,
            bases.c.created_at,
            users.c.base_name,
            func.coalesce(users.c.deltas, literal(0)),
        )
        .outerjoin(users, users.c.digest == bases.c.digest)
        .order_by(bases.c.digest)
        .limit(limit)
    )
    missing = (
        select(users.c.digest, users.c.base_name, users.c.deltas)
        .outerjoin(bases, bases.c.digest == users.c.digest)
        .where(bases.c.digest.is_(None))
        .order_by(users.c.digest)
        .limit(limit)
    )
    with _read(meta) as conn:
        out = [BaseRow(d, True, s, nt, np_, c, bn, int(n)) for d, s, nt, np_, c, bn, n in conn.execute(registered)]
        out += [BaseRow(d, False, None, None, None, None, bn, int(n)) for d, bn, n in conn.execute(missing)]
    return out


def totals(meta: MetadataStore) -> Totals:
    """What the whole server stores against what its bundles would be as full weights."""
    with _read(meta) as conn:
        sizes = (func.coalesce(func.sum(bundles.c.size), 0), func.coalesce(func.sum(bundles.c.reconstructed_nbytes), 0))
        n_bundles, bundle_bytes, full = conn.execute(select(func.count(), *sizes)).one()
        n_bases, base_bytes = conn.execute(select(func.count(), func.coalesce(func.sum(bases.c.size), 0))).one()
        names = conn.execute(select(func.count(distinct(tags.c.name)))).scalar_one()
    return Totals(int(n_bundles), int(n_bases), int(names), int(bundle_bytes), int(base_bytes), int(full))
