"""Hugging Face Hub-compatible routes serving each delta bundle as a PEFT adapter repository.

``huggingface_hub.snapshot_download(repo_id=NAME, revision=REV, endpoint=URL)`` (and so vLLM's
``lora_path`` or LoRAX's ``adapter_source="hub"`` with ``HF_ENDPOINT=URL``) reads, in order:
``GET /api/models/{repo}/revision/{rev}`` (``sha``, ``siblings``), ``GET /api/models/{repo}/tree/{sha}``
(files with ``size`` and ``oid``), then ``HEAD`` and ``GET /{repo}/resolve/{sha}/{file}``
(``X-Repo-Commit``, ``ETag``, ``Content-Length``). A repo is a model name (``name`` or
``org/name``); a revision is a tag, ``main``, a commit id, or a bundle digest the name points at;
the commit ``sha`` is ``service.hub_commits.commit_id(digest)`` (40 hex digits, as huggingface_hub
needs for offline re-use). Files are the bundle's PEFT export.

``main`` follows pushes, as a Hub branch does: it is the name's tag literally called ``main`` if
there is one (an explicit default), else the tag pushed (or moved) last, so ``mcnc push --tag v1``
is what vLLM's and LoRAX's default revision fetches.
"""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from service.adapters import AdapterStore
from service.deps import AdaptersDep, StoreDep, require
from service.errors import (
    EntryNotFoundError,
    InvalidRequestError,
    NotAnAdapterError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from service.hub_commits import COMMIT_RE, CommitIndex, commit_id
from service.ranges import validate_request
from service.storage import Store, TagRecord, parse_ref, validate_name

__all__ = ["HUB_DEFAULT_REVISION", "resolve_revision", "router"]


class HubErrorResponse(BaseModel):
    """The Hub's error body (``service.errors.hub_error_response``): the message itself."""

    error: str


_HUB_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": HubErrorResponse,
        "description": "The Hugging Face Hub's error form: X-Error-Code is RepoNotFound, RevisionNotFound or "
        "EntryNotFound for those, the service's code otherwise; X-Error-Message repeats the message",
    }
}
router = APIRouter(tags=["hub"], responses=_HUB_ERRORS)
HUB_DEFAULT_REVISION = "main"  # huggingface_hub's default: the tag "main", else the name's newest tag
_READ = [Depends(require("read"))]
_COMMITS = CommitIndex()  # commits answered by this process: a commit revision resolves without a scan
_COMMIT_SCAN_TAGS = 1000  # else the name's first tags (in tag order) are searched, a bounded query


def resolve_revision(store: Store, repo_id: str, revision: str) -> tuple[str, TagRecord | None]:
    """``(bundle digest, the tag it came from or None for a digest revision)`` of ``repo_id@revision``.

    Raises:
        RepoNotFoundError: no name ``repo_id`` (or not a valid name).
        RevisionNotFoundError: no such tag, or a digest ``repo_id`` does not name.
        NotAnAdapterError: the bundle is a full-mode model.
    """
    try:
        validate_name(repo_id)
    except InvalidRequestError as exc:
        raise RepoNotFoundError(f"no repository {repo_id!r}: {exc.message}") from exc
    # Point queries only: a name may carry any number of tags (issue 11 D9).
    first = store.meta.tags_named(repo_id, limit=10)
    if not first:
        raise RepoNotFoundError(f"no repository {repo_id!r}: push a bundle with POST /bundles?name={repo_id}")
    try:
        ref = parse_ref(revision)
    except InvalidRequestError:
        ref = None
    found = store.meta.get_tag(repo_id, revision) if len(revision) <= 128 else None  # a tag "main" wins
    if found is None and revision == HUB_DEFAULT_REVISION:
        found = store.meta.newest_tag(repo_id)  # the last push moves main (the name has a tag: checked above)
    if found is not None:
        digest = found.digest
    elif ref is not None and ref.digest is not None and store.meta.tags_named(repo_id, limit=1, digest=ref.digest):
        digest = ref.digest
    elif COMMIT_RE.match(revision) and (by_commit := _digest_of_commit(store, repo_id, revision)) is not None:
        digest = by_commit
    else:
        known = ", ".join(t.tag for t in first)
        raise RevisionNotFoundError(
            f"{repo_id!r} has no revision {revision!r} (tags: {known}; main: the tag pushed last; a commit; a digest)"
        )
    rec = store.meta.get_bundle(digest)
    if rec is None:  # pragma: no cover - a tag always points at a stored bundle (foreign key)
        raise RevisionNotFoundError(f"{repo_id!r}@{revision} points at a missing bundle")
    if rec.mode != "delta":
        raise NotAnAdapterError(
            f"{repo_id}@{revision} (sha256:{digest}) is a full-mode model, not an adapter: fetch its weights "
            "with GET /models/{ref}/weights or client.load"
        )
    return digest, found


def _digest_of_commit(store: Store, repo_id: str, commit: str) -> str | None:
    """The digest whose commit id is ``commit`` among those ``repo_id`` names, or None.

    Known to this process (it answered that commit): one point query. Else the name's first
    ``_COMMIT_SCAN_TAGS`` tags are searched: a commit of a bundle named only by tags past those,
    and not answered by this process since it started, resolves by its tag or digest only.
    """
    known = _COMMITS.digest(commit)
    if known is not None and store.meta.tags_named(repo_id, limit=1, digest=known):
        return known
    for t in store.meta.tags_named(repo_id, limit=_COMMIT_SCAN_TAGS):
        if commit_id(t.digest) == commit:
            _COMMITS.commit(t.digest)
            return t.digest
    return None


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@router.get("/api/models/{repo_id:path}/revision/{revision}", dependencies=_READ)
def model_info(repo_id: str, revision: str, store: StoreDep, adapters: AdaptersDep) -> dict[str, Any]:
    """Hub model info of ``repo_id`` at ``revision``: ``sha`` (the commit id) and ``siblings``."""
    return _model_info(store, adapters, repo_id, revision)


def _model_info(store: Store, adapters: AdapterStore, repo_id: str, revision: str) -> dict[str, Any]:
    digest, tag = resolve_revision(store, repo_id, revision)
    files = adapters.files(digest)
    rec = store.meta.get_bundle(digest)
    assert rec is not None
    tags = ["peft", "lora", "mcnc"]
    # Every key a huggingface_hub release reads without a default is present: 0.23.x's (LoRAX pins
    # ^0.23.2) ModelInfo.__init__ does kwargs.pop("id" / "private" / "downloads" / "likes" / "tags").
    return {
        "_id": digest,
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/", 1)[0] if "/" in repo_id else None,
        "sha": _COMMITS.commit(digest),
        "private": False,
        "disabled": False,
        "gated": False,
        "downloads": 0,  # not counted
        "likes": 0,
        "library_name": "peft",
        "pipeline_tag": None,  # the adapter's task is not recorded in the bundle
        "tags": tags,
        "cardData": {"library_name": "peft", "tags": tags},
        "createdAt": _iso(rec.created_at),
        "lastModified": _iso(tag.updated_at if tag else rec.created_at),
        "siblings": [{"rfilename": f.name, "size": len(f.data), "blobId": f.oid} for f in files.values()],
    }


@router.get("/api/models/{repo_id:path}/tree/{revision}", dependencies=_READ)
def list_tree(repo_id: str, revision: str, store: StoreDep, adapters: AdaptersDep) -> list[dict[str, Any]]:
    """The repository's files at ``revision`` (flat: no folders; ``recursive`` changes nothing)."""
    digest, _ = resolve_revision(store, repo_id, revision)
    return [
        {"type": "file", "path": f.name, "size": len(f.data), "oid": f.oid} for f in adapters.files(digest).values()
    ]


# After the two routes above: "{repo_id:path}" would match their paths too.
@router.get("/api/models/{repo_id:path}", dependencies=_READ)
def model_info_main(repo_id: str, store: StoreDep, adapters: AdaptersDep) -> dict[str, Any]:
    """Hub model info of ``repo_id`` at ``main`` (its tag ``main``, else its newest tag)."""
    return _model_info(store, adapters, repo_id, HUB_DEFAULT_REVISION)


@router.get("/{repo_id:path}/resolve/{revision}/{filename}", operation_id="hub_get_file", dependencies=_READ)
@router.head("/{repo_id:path}/resolve/{revision}/{filename}", operation_id="hub_head_file", dependencies=_READ)
def resolve_file(
    repo_id: str, revision: str, filename: str, request: Request, store: StoreDep, adapters: AdaptersDep
) -> Response:
    """One adapter file: ``X-Repo-Commit``, strong ``ETag`` (its sha256), 304, Range/206."""
    digest, tag = resolve_revision(store, repo_id, revision)
    files = adapters.files(digest)
    f = files.get(filename)
    if f is None:
        raise EntryNotFoundError(
            f"{repo_id}@{revision} has no file {filename!r} (it has {sorted(files)})",
            headers={"X-Repo-Commit": _COMMITS.commit(digest)},
        )
    pinned = tag is None  # a digest or commit revision never changes
    headers = {
        "X-Repo-Commit": _COMMITS.commit(digest),
        "Cache-Control": "public, max-age=31536000, immutable" if pinned else "no-cache",
    }
    answer = validate_request(request.headers, len(f.data), f.sha256, headers)
    if answer is None:
        return Response(status_code=304, headers=headers)
    status, start, end = answer
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    body = b"" if request.method == "HEAD" else f.data[start:end]
    return Response(body, status_code=status, headers=headers, media_type=media)
