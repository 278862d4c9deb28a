"""The one-statement read behind the Hub routes' revision cache, mixed into ``MetadataStore``.

A Hub answer about ``repo@revision`` depends on: the tag the revision names (its digest, commit and
when it moved), its bundle's verification columns (``verified_at``, ``verification_failed_at``:
another replica may set them), whether the bundle's base is stored (a delta is checked once it is)
and the repo name its base is served under (``base_model_name_or_path``). ``revision_state`` reads
all of it in one indexed statement, so a cached answer can be checked per request with one round
trip instead of the eight or nine point queries that rebuild it (``service/hub/files.py``).

The tag is picked by the resolver's rule (``service/hub/revisions.py``): the tag named ``tag``
first; else, by the revision's form, the tag ``main`` then the newest push (``newest``), the first
tag by name with that commit (``commit``), or the first tag by name pointing at that digest
(``digest``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, case, exists, func, or_, select, true

from service.storage.refs import TagRecord
from service.storage.schema import base_names, bases, bundles, tags

__all__ = ["Alternative", "HubStateQueries", "RevisionState"]

Alternative = Literal["tag", "newest", "commit", "digest"]


@dataclass(frozen=True)
class RevisionState:
    """What a Hub answer about one revision depends on (module docstring); equal states, equal answers.

    Attributes:
        tag: the tag the revision names.
        verified_at, verification_failed_at: its bundle's verification columns.
        base_here: the bundle's base is stored (a delta; False for none).
        base_model: the repo name the base is served under (``service.hub.files.base_model_name``).
    """

    tag: TagRecord
    verified_at: float | None
    verification_failed_at: float | None
    base_here: bool
    base_model: str | None


@lru_cache(maxsize=8)
def _statement(alternative: Alternative) -> Any:
    """The ``revision_state`` statement for one form of revision, built once; parameters ``name``,
    ``tag`` and (by form) ``commit`` / ``digest``."""
    b = bundles
    named = exists().where(base_names.c.digest == b.c.base_sha256, base_names.c.name == b.c.base_name)
    first = select(func.min(base_names.c.name)).where(base_names.c.digest == b.c.base_sha256).scalar_subquery()
    here = exists().where(bases.c.digest == b.c.base_sha256)
    by_name = tags.c.tag == bindparam("tag")
    cond: Any = by_name
    order: list[Any] = [case((by_name, 0), else_=1)]
    if alternative == "newest":  # the tag main (matched above when tag="main"), else the newest push
        cond = true()
        order.append(tags.c.updated_at.desc())
    elif alternative == "commit":
        cond = or_(by_name, tags.c.commit == bindparam("commit"))
    elif alternative == "digest":
        cond = or_(by_name, tags.c.digest == bindparam("digest"))
    order.append(tags.c.tag)
    cols = (tags.c.name, tags.c.tag, tags.c.digest, tags.c.updated_at, tags.c.commit, b.c.verified_at,
            b.c.verification_failed_at, b.c.base_name, here.label("base_here"), named.label("named"),
            first.label("first_name"))  # fmt: skip
    return (
        select(*cols)
        .select_from(tags.join(b, b.c.digest == tags.c.digest))
        .where(tags.c.name == bindparam("name"), cond)
        .order_by(*order)
        .limit(1)
    )


class HubStateQueries:
    """``revision_state`` for ``MetadataStore`` (which supplies ``_tx``)."""

    _tx: Callable[..., AbstractContextManager[Connection]]  # MetadataStore's transaction

    def revision_state(
        self, name: str, tag: str, alternative: Alternative = "tag", *, commit: str = "", digest: str = ""
    ) -> RevisionState | None:
        """The state of the revision of ``name`` that ``tag`` / ``alternative`` names (module
        docstring), or None when it names no tag (a base repo, an unknown revision or name)."""
        params = {"name": name, "tag": tag, "commit": commit, "digest": digest}
        with self._tx(write=False) as conn:
            row = conn.execute(_statement(alternative), params).first()
        if row is None:
            return None
        rec = TagRecord(row.name, row.tag, row.digest, row.updated_at, row.commit)
        base_model = row.base_name if row.named else row.first_name
        return RevisionState(rec, row.verified_at, row.verification_failed_at, bool(row.base_here), base_model)
