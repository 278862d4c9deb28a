"""Hugging Face Hub-compatible routes serving each delta bundle as a PEFT adapter repository.

``huggingface_hub.snapshot_download(repo_id=NAME, revision=REV, endpoint=URL)`` (and so vLLM's
``lora_path`` or LoRAX's ``adapter_source="hub"`` with ``HF_ENDPOINT=URL``) reads, in order:
``GET /api/models/{repo}/revision/{rev}`` (``sha``, ``siblings``), ``GET /api/models/{repo}/tree/{sha}``
(files with ``size`` and ``oid``), then ``HEAD`` and ``GET /{repo}/resolve/{sha}/{file}``
(``X-Repo-Commit``, ``ETag``, ``Content-Length``). A repo is a model name (``name`` or
``org/name``); a revision is a tag, ``main``, or a bundle digest the
name points at, or its 40-hex commit id (``service/hub/revisions.py``); ``main`` is the tag ``main``,
else the tag pushed most recently. Files are the bundle's PEFT export.
"""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.adapters import AdapterStore
from service.deps import AdaptersDep, StoreDep, require
from service.errors import EntryNotFoundError, NotAnAdapterError
from service.http import ranged_response
from service.hub.revisions import MAIN, Revision, resolve
from service.schemas import HubErrorResponse
from service.storage import Store

__all__ = ["HUB_DEFAULT_REVISION", "resolve_revision", "router"]

_HUB_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": HubErrorResponse,
        "description": "the Hub shape, X-Error-Code RepoNotFound etc.",
    }
}
router = APIRouter(tags=["hub"], responses=_HUB_ERRORS)
HUB_DEFAULT_REVISION = MAIN  # huggingface_hub's default: the tag main, else the newest push
_READ = [Depends(require("read"))]


def resolve_revision(store: Store, repo_id: str, revision: str) -> Revision:
    """The adapter revision ``repo_id@revision`` names (``service.hub.revisions.resolve``).

    Raises:
        RepoNotFoundError, RevisionNotFoundError: as ``resolve``.
        NotAnAdapterError: the revision is a full-mode model or a base (not yet served on these routes).
    """
    rev = resolve(store, repo_id, revision)
    if rev.kind != "adapter" or rev.exact:
        raise NotAnAdapterError(
            f"{repo_id}@{revision} (sha256:{rev.digest}) is a full-mode model or a base, not an adapter: fetch its "
            "weights with GET /models/{ref}/weights or client.load"
        )
    return rev


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@router.get("/api/models/{repo_id:path}/revision/{revision}", dependencies=_READ)
def model_info(repo_id: str, revision: str, store: StoreDep, adapters: AdaptersDep) -> dict[str, Any]:
    """Hub model info of ``repo_id`` at ``revision``: ``sha`` (the bundle digest) and ``siblings``."""
    return _model_info(store, adapters, repo_id, revision)


def _model_info(store: Store, adapters: AdapterStore, repo_id: str, revision: str) -> dict[str, Any]:
    rev = resolve_revision(store, repo_id, revision)
    files = adapters.files(rev.digest)
    rec = rev.bundle
    assert rec is not None
    # Every field huggingface_hub's ModelInfo requires: 0.23.x reads downloads, likes, private and
    # tags with no default (hf_api.py ModelInfo.__init__), which LoRAX's first call needs.
    return {
        "_id": rev.commit[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.partition("/")[0] if "/" in repo_id else None,
        "sha": rev.commit,
        "private": False,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "library_name": "peft",
        "pipeline_tag": None,
        "tags": ["peft", "lora", "mcnc", "safetensors"],
        "cardData": {"library_name": "peft", "tags": ["peft", "lora", "mcnc"]},
        "createdAt": _iso(rec.created_at),
        "lastModified": _iso(rev.updated_at),
        "siblings": [{"rfilename": f.name, "size": f.size, "blobId": f.oid} for f in files.values()],
    }


@router.get("/api/models/{repo_id:path}/tree/{revision}", dependencies=_READ)
def list_tree(repo_id: str, revision: str, store: StoreDep, adapters: AdaptersDep) -> list[dict[str, Any]]:
    """The repository's files at ``revision`` (flat: no folders; ``recursive`` changes nothing)."""
    rev = resolve_revision(store, repo_id, revision)
    return [{"type": "file", "path": f.name, "size": f.size, "oid": f.oid} for f in adapters.files(rev.digest).values()]


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
    rev = resolve_revision(store, repo_id, revision)
    files = adapters.files(rev.digest)
    f = files.get(filename)
    if f is None:
        raise EntryNotFoundError(
            f"{repo_id}@{revision} has no file {filename!r} (it has {sorted(files)})",
            headers={"X-Repo-Commit": rev.commit},
        )
    headers = {
        "X-Repo-Commit": rev.commit,
        "Cache-Control": "public, max-age=31536000, immutable" if rev.pinned else "no-cache",
    }
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    return ranged_response(  # the body is opened before the status line: an eviction cannot cut it
        request,
        total=f.size,
        etag=f.sha256,
        headers=headers,
        open_body=lambda start, end: adapters.open(rev.digest, f, start, end),
        media_type=media,
    )
