"""Hub listing reads (``GET /api/models``, ``/refs``, ``/commits``): keyset queries, mixed into ``MetadataStore``.

Every page is a bounded read, whatever the number of rows: names come from an index range after the
cursor (``name > :after ORDER BY name LIMIT n``, the ``tags`` primary key and ``base_names``'s),
never ``OFFSET`` and never ``count(*)``; a page's heads (``main``'s commit) are one ``IN`` query over
that page's names. A ``search`` (a substring of the id, any case) cannot use a b-tree index: it
filters the names in index order and stops at the page's end, so it reads as many names as it takes
to find a page of matches (the whole name index when fewer match; docs/service.md "Hub listing").

``main`` is the rule of ``MetadataStore.main_tag``: the tag called ``main``, else the tag pushed most
recently (ties: the first tag name).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, and_, func, or_, select

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


def _name_conds(col: Any, *, after: str | None, descending: bool, search: str | None, author: str | None) -> list[Any]:
    conds: list[Any] = []
    if after is not None:
        conds.append(col < after if descending else col > after)
    if search:
        conds.append(col.icontains(search, autoescape=True))
    if author:
        conds.append(col.startswith(author + "/", autoescape=True))
    return conds


class ListingQueries:
    """The listing reads of ``MetadataStore`` (which supplies ``_tx``)."""

    _tx: Callable[..., AbstractContextManager[Connection]]  # MetadataStore's transaction

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
        ``search`` (any case), in org ``author`` (``author/...``). Three bounded queries."""
        order = (lambda c: c.desc()) if descending else (lambda c: c.asc())
        named = (
            select(tags.c.name)
            .where(*_name_conds(tags.c.name, after=after, descending=descending, search=search, author=author))
            .group_by(tags.c.name)
            .order_by(order(tags.c.name))
            .limit(limit)
        )
        based = (
            select(base_names.c.name, base_names.c.commit, base_names.c.digest, base_names.c.updated_at)
            .add_columns(bases.c.created_at)
            .join(bases, bases.c.digest == base_names.c.digest)
            .where(*_name_conds(base_names.c.name, after=after, descending=descending, search=search, author=author))
            .order_by(order(base_names.c.name))
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            names = [r.name for r in conn.execute(named)]
            out = [RepoSummary(r.name, "bases", r.commit, r.digest, None, float(r.created_at), float(r.updated_at))
                   for r in conn.execute(based)]  # fmt: skip
            # Merge the two ordered lists and keep the page's first `limit`, then read only their heads.
            keep = set(sorted(names + [s.name for s in out], reverse=descending)[:limit])
            out = [s for s in out if s.name in keep]
            out += self._heads(conn, [n for n in names if n in keep])
        return sorted(out, key=lambda s: s.name, reverse=descending)

    @staticmethod
    def _heads(conn: Connection, names: list[str]) -> list[RepoSummary]:
        """``main`` of each bundle repo in ``names``: one query over their tags (primary key range)."""
        if not names:
            return []
        query = (
            select(tags.c.name, tags.c.tag, tags.c.commit, tags.c.digest, tags.c.updated_at, bundles.c.mode)
            .add_columns(bundles.c.created_at)
            .join(bundles, bundles.c.digest == tags.c.digest)
            .where(tags.c.name.in_(names))
            .order_by(tags.c.name, tags.c.updated_at.desc(), tags.c.tag)
        )
        first: dict[str, Any] = {}  # per name: its newest push (ties: the first tag name), or its tag main
        newest: dict[str, float] = {}
        for r in conn.execute(query):
            if r.name not in first:
                first[r.name], newest[r.name] = r, r.updated_at
            elif r.tag == "main":
                first[r.name] = r
        return [
            RepoSummary(n, "bundles", r.commit, r.digest, r.mode, float(r.created_at), float(newest[n]))
            for n, r in first.items()
        ]

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
