"""Hugging Face Hub-compatible routes serving each delta bundle as a PEFT adapter repository.

``huggingface_hub.snapshot_download(repo_id=NAME, revision=REV, endpoint=URL)`` (and so vLLM's
``lora_path`` or LoRAX's ``adapter_source="hub"`` with ``HF_ENDPOINT=URL``) reads, in order:
``GET /api/models/{repo}/revision/{rev}`` (``sha``, ``siblings``), ``GET /api/models/{repo}/tree/{sha}``
(files with ``size`` and ``oid``), then ``HEAD`` and ``GET /{repo}/resolve/{sha}/{file}``
(``X-Repo-Commit``, ``ETag``, ``Content-Length``). A repo is a model name (``name`` or
``org/name``); a revision is a tag, ``main`` (the name's default tag), or a bundle digest the
name points at; the commit ``sha`` is the bundle digest. Files are the bundle's PEFT export.
"""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.adapters import AdapterStore
from service.deps import AdaptersDep, StoreDep, require
from service.errors import (
    EntryNotFoundError,
    InvalidRequestError,
    NotAnAdapterError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from service.http import ranged_response
from service.storage import DEFAULT_TAG, Store, TagRecord, parse_ref, validate_name

__all__ = ["HUB_DEFAULT_REVISION", "resolve_revision", "router"]

router = APIRouter(tags=["hub"])
HUB_DEFAULT_REVISION = "main"  # huggingface_hub's default; resolves to the name's DEFAULT_TAG
_READ = [Depends(require("read"))]


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
        found = store.meta.get_tag(repo_id, DEFAULT_TAG)
    if found is not None:
        digest = found.digest
    elif ref is not None and ref.digest is not None and store.meta.tags_named(repo_id, limit=1, digest=ref.digest):
        digest = ref.digest
    else:
        known = ", ".join(t.tag for t in first)
        raise RevisionNotFoundError(
            f"{repo_id!r} has no revision {revision!r} (tags: {known}; 'main' is {DEFAULT_TAG!r}; or a bundle digest)"
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


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@router.get("/api/models/{repo_id:path}/revision/{revision}", dependencies=_READ)
def model_info(repo_id: str, revision: str, store: StoreDep, adapters: AdaptersDep) -> dict[str, Any]:
    """Hub model info of ``repo_id`` at ``revision``: ``sha`` (the bundle digest) and ``siblings``."""
    return _model_info(store, adapters, repo_id, revision)


def _model_info(store: Store, adapters: AdapterStore, repo_id: str, revision: str) -> dict[str, Any]:
    digest, tag = resolve_revision(store, repo_id, revision)
    files = adapters.files(digest)
    rec = store.meta.get_bundle(digest)
    assert rec is not None
    return {
        "_id": digest,
        "id": repo_id,
        "modelId": repo_id,
        "sha": digest,
        "private": False,
        "disabled": False,
        "gated": False,
        "library_name": "peft",
        "tags": ["peft", "lora", "mcnc"],
        "createdAt": _iso(rec.created_at),
        "lastModified": _iso(tag.updated_at if tag else rec.created_at),
        "siblings": [{"rfilename": f.name, "size": f.size, "blobId": f.oid} for f in files.values()],
    }


@router.get("/api/models/{repo_id:path}/tree/{revision}", dependencies=_READ)
def list_tree(repo_id: str, revision: str, store: StoreDep, adapters: AdaptersDep) -> list[dict[str, Any]]:
    """The repository's files at ``revision`` (flat: no folders; ``recursive`` changes nothing)."""
    digest, _ = resolve_revision(store, repo_id, revision)
    return [{"type": "file", "path": f.name, "size": f.size, "oid": f.oid} for f in adapters.files(digest).values()]


# After the two routes above: "{repo_id:path}" would match their paths too.
@router.get("/api/models/{repo_id:path}", dependencies=_READ)
def model_info_main(repo_id: str, store: StoreDep, adapters: AdaptersDep) -> dict[str, Any]:
    """Hub model info of ``repo_id`` at ``main`` (its default tag)."""
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
            headers={"X-Repo-Commit": digest},
        )
    pinned = tag is None  # a digest revision never changes
    headers = {
        "X-Repo-Commit": digest,
        "Cache-Control": "public, max-age=31536000, immutable" if pinned else "no-cache",
    }
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    return ranged_response(  # the body is opened before the status line: an eviction cannot cut it
        request,
        total=f.size,
        etag=f.sha256,
        headers=headers,
        open_body=lambda start, end: adapters.open(digest, f, start, end),
        media_type=media,
    )
