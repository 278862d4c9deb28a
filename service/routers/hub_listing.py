"""Hub listing routes: ``GET /api/models`` (``list_models``), ``/api/models/{repo}/refs``
(``list_repo_refs``) and ``/api/models/{repo}/commits/{revision}`` (``list_repo_commits``).

Included before ``service/routers/hub.py``, whose ``/api/models/{repo_id:path}`` would match these
paths too. A repo id is ``name`` or ``org/name`` (the routes take one or two segments, so a tree
path can never be read as a repo).

Pagination is the Hub's: a page carries ``Link: <next-url>; rel="next"`` while more may follow,
and ``huggingface_hub``'s ``paginate()`` (``utils/_pagination.py``, 0.23 to 2.x) requests that URL
as given (absolute: the request's own scheme, host and query, with ``cursor`` set). The cursor is
opaque to clients: the last id of the page (listing), or the last ``(push time, commit)``
(commits), so every page is a keyset read (``service/storage/listing.py``), never an ``OFFSET``.

What a listed item is: ``ModelInfo``'s fields as every huggingface_hub version parses them (``id``,
``modelId``, ``author``, ``sha``: ``main``'s commit, ``lastModified``: the newest push,
``createdAt``, ``private``, ``downloads``/``likes``: 0, ``tags``, ``library_name``...). No
``siblings``: a repo's files come from ``model_info`` (they are exported on demand).

History: the server keeps each tag's current commit, not the commits a tag pointed at before. So
``commits/main``, where ``main`` follows pushes (no tag called ``main``), lists the distinct
commits the name's tags point at, newest push first: each one is a commit ``main`` pointed at when
it was pushed. Any other revision (a tag, the tag ``main``, a commit id, a digest, a base repo)
lists one commit: its current one.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import SettingsDep, StoreDep, require
from service.errors import InvalidRequestError
from service.hub.dates import hub_date, info_fields
from service.hub.revisions import EXACT_SUFFIX, MAIN, Revision, resolve
from service.schemas import HubErrorResponse
from service.storage import Store
from service.storage.listing import CommitRecord, RepoSummary

__all__ = ["REFS_MAX_TAGS", "router"]

_HUB_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": HubErrorResponse, "description": "the Hub shape, X-Error-Code RepoNotFound etc."}
}
router = APIRouter(tags=["hub"], responses=_HUB_ERRORS)
_READ = [Depends(require("read"))]
REFS_MAX_TAGS = 10_000  # /refs lists a name's first tags (by name), at most this many
# Sorts the server can honour: every repo has 0 downloads / likes / trending score, so those sort
# to id order (ties kept in id order); lastModified / createdAt would need every name's newest push.
_SORTS = {None, "id", "downloads", "likes", "trendingScore", "trending_score"}
# Hub filters with nothing to filter on here: refused (400) rather than ignored with a wrong answer.
_UNSUPPORTED = ("filter", "pipeline_tag", "gated", "apps", "inference", "inference_provider", "num_parameters",
                "library", "language", "task", "trained_dataset", "tags", "model_name")  # fmt: skip
_KINDS = {  # what huggingface_hub reads as library_name / tags, per kind of repo
    "delta": ("peft", ["peft", "lora", "mcnc", "safetensors"]),
    "full": ("transformers", ["transformers", "mcnc", "safetensors"]),
    None: ("transformers", ["transformers", "mcnc", "safetensors", "base_model"]),
}


def _encode(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode(cursor: str, fix: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"cursor={cursor[:40]!r} is not a cursor this server issued: {fix}") from exc


def _link(request: Request, response: Response, cursor: str) -> None:
    url = request.url.include_query_params(cursor=cursor)
    response.headers["Link"] = f'<{url}>; rel="next"'


def _item(s: RepoSummary, card: bool) -> dict[str, Any]:
    library, tags = _KINDS[s.mode if s.kind == "bundles" else None]
    item: dict[str, Any] = {
        **info_fields(s.name, s.commit, s.created_at, s.updated_at),
        "trendingScore": 0,
        "tags": list(tags),
        "pipeline_tag": None,
        "library_name": library,
    }
    if card:
        item["cardData"] = {"library_name": library, "tags": list(tags)}
    return item


@router.get("/api/models", operation_id="hub_list_models", dependencies=_READ)
async def list_models(
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    search: Annotated[str | None, Query(max_length=257, description="a substring of the id, any case")] = None,
    author: Annotated[str | None, Query(max_length=128, description="the org: ids author/...")] = None,
    limit: Annotated[int | None, Query(ge=1, description="page size (capped at MCNC_HUB_PAGE_SIZE)")] = None,
    sort: Annotated[str | None, Query(max_length=32)] = None,
    direction: Annotated[int | None, Query(description="-1: descending")] = None,
    full: bool = False,
    cardData: bool = False,  # the Hub's parameter name
    config: bool = False,
    expand: Annotated[list[str], Query(max_length=64, description="accepted; every field is listed")] = [],  # noqa: B006
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> list[dict[str, Any]]:
    """One page of Hub repos (bundle names and named bases) in id order; ``Link`` names the next."""
    refused = [p for p in _UNSUPPORTED if p in request.query_params]
    if refused:
        raise InvalidRequestError(
            f"{refused[0]}= is not supported by this server's listing: filter with search= (a substring of the "
            "id) or author= (the org)"
        )
    if sort not in _SORTS:
        raise InvalidRequestError(
            f"sort={sort!r} is not supported: repos are listed in id order (sort=id, downloads, likes or "
            "trendingScore give that order here: every repo has 0 of each); leave sort out"
        )
    if direction not in (None, -1, 1):
        raise InvalidRequestError(f"direction={direction}: use -1 (descending) or leave it out")
    if author is not None and ("/" in author or not author):
        raise InvalidRequestError(f"author={author!r}: give the org alone (the part before '/' of an id)")
    after = None
    if cursor is not None:
        got = _decode(cursor, "start again without cursor=")
        if not isinstance(got, dict) or not isinstance(got.get("a"), str):
            raise InvalidRequestError(f"cursor={cursor[:40]!r} is not a listing cursor: start again without cursor=")
        after = got["a"]
    page = min(limit or settings.hub_page_size, settings.hub_page_size)
    _ = config, expand  # accepted for huggingface_hub; nothing more to add (no config is known here)
    rows = await run_in_threadpool(
        store.meta.list_repos, limit=page, after=after, descending=direction == -1, search=search, author=author
    )
    if len(rows) == page:  # possibly more: the next page starts after this one's last id
        _link(request, response, _encode({"a": rows[-1].name}))
    return [_item(s, full or cardData) for s in rows]


def _refs(store: Store, repo_id: str) -> dict[str, Any]:
    main = resolve(store, repo_id, MAIN)
    tags = store.meta.tag_commits(repo_id, limit=REFS_MAX_TAGS) if main.kind != "base" else []
    return {
        "branches": [{"name": MAIN, "ref": f"refs/heads/{MAIN}", "targetCommit": main.commit}],
        "converts": [],
        "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in tags],
        "pullRequests": [],
    }


@router.get("/api/models/{name}/refs", operation_id="hub_list_refs", dependencies=_READ)
def list_refs(name: str, store: StoreDep) -> dict[str, Any]:
    """The repo's branch ``main`` and its tags, each with its commit id (``list_repo_refs``)."""
    return _refs(store, name)


@router.get("/api/models/{org}/{name}/refs", operation_id="hub_list_refs_org", dependencies=_READ)
def list_refs_org(org: str, name: str, store: StoreDep) -> dict[str, Any]:
    """The repo's branch ``main`` and its tags, each with its commit id (``list_repo_refs``)."""
    return _refs(store, f"{org}/{name}")


def _entry(repo_id: str, c: CommitRecord, exact: bool, formatted: bool) -> dict[str, Any]:
    more = f" (+{c.tags - 1} more tag{'s' if c.tags > 2 else ''})" if c.tags > 1 else ""
    title = f"{repo_id}:{c.first_tag}{more}"  # the tags pointing at it now (the first by name)
    kind = "adapter" if c.mode == "delta" else "whole model" if c.mode == "full" else "base"
    message = f"sha256:{c.digest} ({kind})" + (", float32 tensors" if exact else "")
    out: dict[str, Any] = {
        "id": c.commit[:39] + ("1" if exact else "0"),
        "title": title,
        "message": message,
        "authors": [],
        "date": hub_date(c.updated_at),
    }
    if formatted:
        out["formatted"] = {"title": html.escape(title), "message": html.escape(message)}
    return out


def _commits(
    request: Request, response: Response, store: Store, page: int, repo_id: str, revision: str, cursor: str | None
) -> list[dict[str, Any]]:
    rev: Revision = resolve(store, repo_id, revision)
    formatted = "formatted" in request.query_params.getlist("expand[]")
    base_rev = revision[: -len(EXACT_SUFFIX)] if rev.exact and revision.endswith(EXACT_SUFFIX) else revision
    follows_pushes = base_rev == MAIN and rev.kind != "base" and rev.tag != MAIN
    if not follows_pushes:
        if cursor is not None:
            return []  # one commit, served on the first page
        mode = rev.bundle.mode if rev.bundle is not None else "base"
        one = CommitRecord(rev.commit, rev.digest, mode, rev.updated_at, 1, rev.tag or MAIN)
        return [_entry(repo_id, one, rev.exact, formatted)]
    before = None
    if cursor is not None:
        got = _decode(cursor, "list the commits again without cursor=")
        ok = isinstance(got, dict) and isinstance(got.get("t"), (int, float)) and isinstance(got.get("c"), str)
        if not ok:
            raise InvalidRequestError(f"cursor={cursor[:40]!r} is not a commits cursor: start again without cursor=")
        before = (float(got["t"]), str(got["c"]))
    rows = store.meta.repo_history(repo_id, limit=page, before=before)
    if len(rows) == page:
        _link(request, response, _encode({"t": rows[-1].updated_at, "c": rows[-1].commit}))
    return [_entry(repo_id, c, rev.exact, formatted) for c in rows]


_CURSOR = Annotated[str | None, Query(max_length=1024)]


@router.get("/api/models/{name}/commits/{revision}", operation_id="hub_list_commits", dependencies=_READ)
def list_commits(
    name: str,
    revision: str,
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    cursor: _CURSOR = None,
) -> list[dict[str, Any]]:
    """The commits of ``revision``, newest first (``list_repo_commits``; module docstring: history)."""
    return _commits(request, response, store, settings.hub_page_size, name, revision, cursor)


@router.get("/api/models/{org}/{name}/commits/{revision}", operation_id="hub_list_commits_org", dependencies=_READ)
def list_commits_org(
    org: str,
    name: str,
    revision: str,
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    cursor: _CURSOR = None,
) -> list[dict[str, Any]]:
    """The commits of ``revision``, newest first (``list_repo_commits``; module docstring: history)."""
    return _commits(request, response, store, settings.hub_page_size, f"{org}/{name}", revision, cursor)
