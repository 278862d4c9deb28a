"""Hub listing reads (``GET /api/models``, ``/refs``, ``/commits``): keyset queries, mixed into ``MetadataStore``.

Every page is a bounded read, whatever the number of rows: names come from an index range after the
cursor (``name > :after ORDER BY name LIMIT n``, the ``tags`` primary key and ``base_names``'s),
never ``OFFSET`` and never ``count(*)``; a page's heads (``main``'s commit) are ranked, in the same
statement, over only that page's names' tags. A ``search`` (a substring of the id, any case) cannot
use a b-tree index: it filters the names in index order and stops at the page's end, so it reads as
many names as it takes to find a page of matches (the whole name index when fewer match;
docs/service.md "Hub listing"). A pg_trgm GIN index was tried at 100,000 names: rare searches
fell from 1.6 s to 42 ms p50 on a contended box, but the planner then chose it for common ones too
(8 ms to 215 ms), so none is created.

``main`` is the rule of ``MetadataStore.main_tag``: the tag called ``main``, else the tag pushed most
recently (ties: the first tag name).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
)

from service.storage.schema import base_names, bases, bundles, tags

__all__ = ["CommitRecord", "ListingQueries", "RepoSummary"]

RepoKind = Literal["bundles", "bases"]


@dataclass(frozen=True)
class RepoSummary:
    """One Hub repo as listed: its ``main`` head.

    Attributes:
        name: the repo id (``name`` or ``org/name``).
        kind: ``bundles`` (a name with tags) or ``bases`` (a base registered under a name).
        commit: ``main``'s commit id (40 hex).
        digest: the bundle (or base) digest ``main`` points at.
        mode: the bundle's mode (``delta``: an adapter, ``full``: a whole model); ``None`` for a base.
        created_at: when that bundle (or base) was first stored.
        updated_at: the newest push to the name (a base: its registration).
    """

    name: str
    kind: RepoKind
    commit: str
    digest: str
    mode: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class CommitRecord:
    """A commit a ref of a name pointed at (``tags`` keeps each tag's current commit only).

    Attributes:
        commit: the commit id; digest, mode: its bundle's.
        updated_at: the newest push that made a tag point at it.
        tags: how many of the name's tags point at it now; first_tag: the first of them by name.
    """

    commit: str
    digest: str
    mode: str
    updated_at: float
    tags: int
    first_tag: str


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _name_conds(col: Any, *, after: bool, descending: bool, search: bool, author: bool, bounded: bool) -> list[Any]:
    """Conditions on ``col`` with bound parameters ``after``, ``pattern``, ``org``, ``org_like``, ``org_end``.

    ``author``: ``col >= "org/"`` (an index start in every collation: a string sorts after its
    prefix) and ``LIKE "org/%"`` (exact); ``bounded`` adds ``col < "org0"`` (``'0'`` follows ``'/'``),
    which ends the index range only where names sort bytewise (SQLite; PostgreSQL in a C collation).
    """
    conds: list[Any] = []
    if after:
        conds.append(col < bindparam("after") if descending else col > bindparam("after"))
    if search:
        conds.append(col.ilike(bindparam("pattern"), escape="\\"))
    if author:
        conds += [col >= bindparam("org"), col.like(bindparam("org_like"), escape="\\")]
        if bounded:
            conds.append(col < bindparam("org_end"))
    return conds


@lru_cache(maxsize=64)
def _list_statement(after: bool, descending: bool, search: bool, author: bool, bounded: bool) -> Any:
    """The ``list_repos`` statement for one combination of conditions, built once (building the
    subqueries costs more than running them); parameters ``limit`` and those of ``_name_conds``."""
    order = (lambda c: c.desc()) if descending else (lambda c: c.asc())
    flags = {"after": after, "descending": descending, "search": search, "author": author, "bounded": bounded}
    n = bindparam("limit", type_=Integer)
    page = (
        select(tags.c.name)
        .where(*_name_conds(tags.c.name, **flags))
        .group_by(tags.c.name)
        .order_by(order(tags.c.name))
        .limit(n)
        .subquery()
    )
    # main: the tag "main", else the newest push, ties to the first tag name (MetadataStore.main_tag)
    rank = func.row_number().over(
        partition_by=tags.c.name,
        order_by=[case((tags.c.tag == "main", 0), else_=1), tags.c.updated_at.desc(), tags.c.tag],
    )
    ranked = (
        select(
            tags.c.name,
            tags.c.commit,
            tags.c.digest,
            bundles.c.mode,
            bundles.c.created_at,
            func.max(tags.c.updated_at).over(partition_by=tags.c.name).label("updated_at"),
            rank.label("rank"),
        )
        .join(bundles, bundles.c.digest == tags.c.digest)
        .where(tags.c.name.in_(select(page.c.name)))
        .subquery()
    )
    heads = select(
        ranked.c.name,
        literal_column("'bundles'").label("kind"),
        ranked.c.commit,
        ranked.c.digest,
        ranked.c.mode,
        ranked.c.created_at,
        ranked.c.updated_at,
    ).where(ranked.c.rank == 1)
    based = (
        select(
            base_names.c.name,
            literal_column("'bases'").label("kind"),
            base_names.c.commit,
            base_names.c.digest,
            null().label("mode"),
            bases.c.created_at,
            base_names.c.updated_at,
        )
        .join(bases, bases.c.digest == base_names.c.digest)
        .where(*_name_conds(base_names.c.name, **flags))
        .order_by(order(base_names.c.name))
        .limit(n)
        .subquery()
    )
    both = union_all(heads, select(based)).subquery()
    return select(both).order_by(order(both.c.name)).limit(n)


class ListingQueries:
    """The listing reads of ``MetadataStore`` (which supplies ``_tx``)."""

    _tx: Callable[..., AbstractContextManager[Connection]]  # MetadataStore's transaction
    engine: Engine
    _bytewise: bool | None

    def list_repos(
        self,
        *,
        limit: int,
        after: str | None = None,
        descending: bool = False,
        search: str | None = None,
        author: str | None = None,
    ) -> list[RepoSummary]:
        """Hub repos (bundle names and named bases) in id order (``descending``: reversed), at most
        ``limit``: ids after ``after`` (the cursor: the last id of the previous page), containing
        ``search`` (any case), in org ``author`` (``author/...``).

        One statement: the page's bundle names (an index range of ``tags``, grouped), their heads
        (``main`` ranked per name by a window over just those names' tags), and the named bases of
        the same range, merged in id order."""
        bounded = self._bytewise_names()
        query = _list_statement(after is not None, descending, bool(search), bool(author), bounded)
        params: dict[str, Any] = {"limit": limit, "after": after}
        if search:
            params["pattern"] = f"%{_like_escape(search)}%"
        if author:
            params.update(org=f"{author}/", org_like=f"{_like_escape(author)}/%", org_end=f"{author}0")
        with self._tx(write=False) as conn:
            rows = conn.execute(query, {k: v for k, v in params.items() if v is not None})
            return [RepoSummary(r[0], r[1], r[2], r[3], r[4], float(r[5]), float(r[6])) for r in rows]

    def _bytewise_names(self) -> bool:
        """Whether names sort bytewise here (SQLite's BINARY; PostgreSQL's C / POSIX / C.UTF-8
        collations), read once: only then does an ``author`` page end its index range at ``org0``."""
        cached = getattr(self, "_bytewise", None)
        if cached is None:
            if self.engine.dialect.name != "postgresql":
                cached = True
            else:
                with self._tx(write=False) as conn:
                    q = "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                    collate = str(conn.execute(text(q)).scalar_one())
                cached = collate in ("C", "POSIX") or collate.lower() in ("c.utf-8", "c.utf8")
            self._bytewise = cached
        return cached

    def repo_history(self, name: str, *, limit: int, before: tuple[float, str] | None = None) -> list[CommitRecord]:
        """The distinct commits ``name``'s tags point at, newest push first (ties: commit id
        descending), at most ``limit``, those strictly before ``before`` = ``(updated_at, commit)`` (the
        cursor: the previous page's last). Grouped over the name's tags (``tags_name_commit`` index)."""
        at = func.max(tags.c.updated_at)
        query = (
            select(
                tags.c.commit,
                func.min(tags.c.digest).label("digest"),
                at.label("at"),
                func.count().label("n"),
                func.min(tags.c.tag).label("first_tag"),
            )
            .where(tags.c.name == name)
            .group_by(tags.c.commit)
        )
        if before is not None:
            query = query.having(or_(at < before[0], and_(at == before[0], tags.c.commit < before[1])))
        query = query.order_by(at.desc(), tags.c.commit.desc()).limit(limit).subquery()
        joined = select(query, bundles.c.mode).join(bundles, bundles.c.digest == query.c.digest)
        joined = joined.order_by(query.c.at.desc(), query.c.commit.desc())
        with self._tx(write=False) as conn:
            return [
                CommitRecord(r.commit, r.digest, r.mode, float(r.at), int(r.n), r.first_tag)
                for r in conn.execute(joined)
            ]

    def tag_commits(self, name: str, *, limit: int) -> list[tuple[str, str]]:
        """``(tag, commit)`` of ``name``'s first ``limit`` tags in tag order (the refs listing)."""
        query = select(tags.c.tag, tags.c.commit).where(tags.c.name == name).order_by(tags.c.tag).limit(limit)
        with self._tx(write=False) as conn:
            return [(r.tag, r.commit) for r in conn.execute(query)]
