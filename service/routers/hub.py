"""Hugging Face Hub-compatible routes: delta bundles as PEFT adapter repos, full-mode bundles and
bases registered by name as whole-model repos (``model.safetensors`` + sidecars such as config.json).

``huggingface_hub.snapshot_download(repo_id=NAME, revision=REV, endpoint=URL)`` (and so vLLM's
``lora_path``, LoRAX's ``adapter_source="hub"``, ``transformers``/``peft`` ``from_pretrained`` with
``HF_ENDPOINT=URL``) reads, in order: ``GET /api/models/{repo}/revision/{rev}`` (``sha``,
``siblings``), ``GET /api/models/{repo}/tree/{sha}`` (files with ``size`` and ``oid``), then ``HEAD``
and ``GET /{repo}/resolve/{sha}/{file}`` (``X-Repo-Commit``, ``ETag``, ``Content-Length``);
``get_paths_info`` posts to ``/api/models/{repo}/paths-info/{rev}``. A repo is a model name
(``name`` or ``org/name``); a revision is a tag, ``main``, a bundle digest the name points at, or
its 40-hex commit id, optionally with ``:float32`` (``service/hub/revisions.py``). What each kind of
repo holds is ``service/hub/files.py``: every route here lists or serves exactly that. Every answer
about a revision carries ``X-Repo-Commit`` and ``X-MCNC-Verified`` (``false``: a delta whose base is
not here, never checked against its fingerprint; one that failed is never served).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.adapters import AdapterStore
from service.catalog import Catalog
from service.deps import require
from service.engine import Engine
from service.errors import EntryNotFoundError, InvalidRequestError, PayloadTooLargeError
from service.hub.dates import info_fields
from service.hub.files import HubFile, RepoFiles, cached_repo_files
from service.hub.revisions import MAIN, Revision, resolve
from service.hub.sendfile import file_response
from service.schemas import HubErrorResponse
from service.storage import Store

__all__ = ["HUB_DEFAULT_REVISION", "MAX_PATHS", "resolve_revision", "router"]

_HUB_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": HubErrorResponse,
        "description": "the Hub shape, X-Error-Code RepoNotFound etc.",
    }
}
router = APIRouter(tags=["hub"], responses=_HUB_ERRORS)
HUB_DEFAULT_REVISION = MAIN  # huggingface_hub's default: the tag main, else the newest push
MAX_PATHS = 1000  # paths one paths-info request may ask about
_MAX_PATHS_BODY = 256 << 10
_check_read = require("read")


async def _read_scope(request: Request) -> None:
    """``require("read")`` without a worker-thread hop when it cannot block: sync dependencies each
    cost one (six per Hub request before: ~1 ms apiece on a loaded host, a third of a warm metadata
    request). The check is a token comparison, plus a rate-limit count that may ask Redis: in a
    worker thread then."""
    if request.app.state.rate_limiter.rate > 0:
        await run_in_threadpool(_check_read, request)
    else:
        _check_read(request)


_READ = [Depends(_read_scope)]


@dataclass(frozen=True)
class _Hub:
    """The app state a Hub route reads (one dependency, on the event loop: no thread hop)."""

    store: Store
    catalog: Catalog
    adapters: AdapterStore
    engine: Engine


async def _hub(request: Request) -> _Hub:
    st = request.app.state
    return _Hub(st.store, st.catalog, st.adapters, st.engine)


HubDep = Annotated[_Hub, Depends(_hub)]


def resolve_revision(store: Store, repo_id: str, revision: str) -> Revision:
    """The revision ``repo_id@revision`` names, of any kind (``service.hub.revisions.resolve``).

    Raises:
        RepoNotFoundError, RevisionNotFoundError: as ``resolve``.
    """
    return resolve(store, repo_id, revision)


def _files(hub: _Hub, repo_id: str, revision: str) -> RepoFiles:
    return cached_repo_files(hub.store, hub.catalog, hub.adapters, hub.engine, repo_id, revision)


def _entry(f: HubFile) -> dict[str, Any]:
    """A tree / paths-info entry (huggingface_hub's ``RepoFile(**entry)``)."""
    out: dict[str, Any] = {"type": "file", "path": f.name, "size": f.size, "oid": f.oid}
    if f.lfs is not None:
        out["lfs"] = f.lfs
    return out


def _sibling(f: HubFile) -> dict[str, Any]:
    out: dict[str, Any] = {"rfilename": f.name, "size": f.size, "blobId": f.oid}
    if f.lfs is not None:
        out["lfs"] = f.lfs
    return out


def _model_info(repo: RepoFiles) -> dict[str, Any]:
    rev = repo.rev
    created = rev.bundle.created_at if rev.bundle is not None else rev.updated_at
    if rev.kind == "adapter":
        base = repo.base_model
        library, tags = "peft", ["peft", "lora", "mcnc", "safetensors"]
        card: dict[str, Any] = {"library_name": "peft", "tags": ["peft", "lora", "mcnc"]}
        if base is not None:
            card["base_model"] = base
            tags.append(f"base_model:adapter:{base}")
    else:
        library, tags = "transformers", ["transformers", "safetensors", "mcnc"]
        card = {"library_name": "transformers", "tags": ["mcnc"]}
    if repo.pipeline_tag:
        tags.append(repo.pipeline_tag)
        card["pipeline_tag"] = repo.pipeline_tag
    info: dict[str, Any] = {
        **info_fields(rev.repo, rev.commit, created, rev.updated_at),
        "library_name": library,
        "pipeline_tag": repo.pipeline_tag,
        "tags": tags,
        "cardData": card,
        "siblings": [_sibling(f) for f in repo.files.values()],
        "mcnc": {
            "kind": rev.kind,
            "digest": f"sha256:{rev.digest}",
            "tag": rev.tag,
            "exact": rev.exact,
            "verified": repo.verified,
        },
    }
    if repo.config is not None:
        info["config"] = repo.config
    return info


@router.get("/api/models/{repo_id:path}/revision/{revision}", dependencies=_READ)
def model_info(
    repo_id: str,
    revision: str,
    response: Response,
    hub: HubDep,
) -> dict[str, Any]:
    """Hub model info of ``repo_id`` at ``revision``: ``sha`` (its commit), ``siblings``, ``config``, ``mcnc``."""
    repo = _files(hub, repo_id, revision)
    response.headers.update(repo.headers)
    return _model_info(repo)


@router.get("/api/models/{repo_id:path}/tree/{revision}", dependencies=_READ)
def list_tree(
    repo_id: str,
    revision: str,
    response: Response,
    hub: HubDep,
) -> list[dict[str, Any]]:
    """The repository's files at ``revision`` (flat: no folders; ``recursive`` changes nothing)."""
    repo = _files(hub, repo_id, revision)
    response.headers.update(repo.headers)
    return [_entry(f) for f in repo.files.values()]


@router.get("/api/models/{repo_id:path}/tree/{revision}/{path:path}", dependencies=_READ)
def list_tree_path(
    repo_id: str,
    revision: str,
    path: str,
    response: Response,
    hub: HubDep,
) -> list[dict[str, Any]]:
    """The files under folder ``path``: repos here are flat, so only the root (an empty path) has any."""
    repo = _files(hub, repo_id, revision)
    response.headers.update(repo.headers)
    folder = path.strip("/")
    if folder in ("", "."):
        return [_entry(f) for f in repo.files.values()]
    what = "a file" if folder in repo.files else "no folder"
    raise EntryNotFoundError(
        f"{repo_id}@{revision}: {folder!r} is {what}; repos here are flat (no folders): list the files with "
        f"GET /api/models/{repo_id}/tree/{revision}, or ask about files with POST .../paths-info/{revision}",
        headers=repo.headers,
    )


_PATHS_SCHEMA = {
    "type": "object",
    "required": ["paths"],
    "properties": {
        "paths": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_PATHS},
        "expand": {"type": "boolean"},
    },
}
_PATHS_BODY = {
    "requestBody": {
        "required": True,
        "description": "the file paths to describe (huggingface_hub's get_paths_info sends them as a form)",
        "content": {
            "application/x-www-form-urlencoded": {"schema": _PATHS_SCHEMA},
            "application/json": {"schema": _PATHS_SCHEMA},
        },
    }
}


def _parse_paths(content_type: str, body: bytes) -> list[str]:
    """``paths`` of a paths-info body (form, as huggingface_hub sends it, or JSON); ``expand`` is
    accepted and changes nothing (entries always carry what the tree does).

    Raises:
        InvalidRequestError: another content type, a malformed body, no ``paths``, a non-boolean
            ``expand``, or more than ``MAX_PATHS`` paths.
    """
    kind = content_type.partition(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise InvalidRequestError(f"paths-info body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidRequestError('paths-info body must be a JSON object {"paths": [...]}')
        paths, expand = data.get("paths"), data.get("expand", False)
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise InvalidRequestError('paths-info needs "paths": a list of file paths (strings)')
        if not isinstance(expand, bool):
            raise InvalidRequestError('"expand" must be true or false')
    elif kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidRequestError(f"paths-info form is malformed: {exc}") from exc
        if "paths" not in form:
            raise InvalidRequestError("paths-info needs paths=<file path> (repeatable)")
        paths = form["paths"]
        for value in form.get("expand", []):
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidRequestError(f"expand={value!r}: expected true or false")
    else:
        raise InvalidRequestError(
            f"paths-info takes application/x-www-form-urlencoded (paths=a&paths=b) or application/json, "
            f"got {content_type or 'no content type'!r}"
        )
    if len(paths) > MAX_PATHS:
        raise InvalidRequestError(f"{len(paths)} paths asked for, over the limit of {MAX_PATHS}: ask in batches")
    return paths


@router.post("/api/models/{repo_id:path}/paths-info/{revision}", dependencies=_READ, openapi_extra=_PATHS_BODY)
async def paths_info(
    repo_id: str,
    revision: str,
    request: Request,
    response: Response,
    hub: HubDep,
) -> list[dict[str, Any]]:
    """The entries (as the tree lists them) of the asked ``paths`` that exist at ``revision``; the
    others are left out, as on the Hub."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > _MAX_PATHS_BODY:
        raise PayloadTooLargeError(f"paths-info body is {declared} bytes, over the limit of {_MAX_PATHS_BODY}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_PATHS_BODY:
            raise PayloadTooLargeError(f"paths-info body exceeds the limit of {_MAX_PATHS_BODY} bytes")
    paths = _parse_paths(request.headers.get("content-type", ""), bytes(body))
    repo = await run_in_threadpool(_files, hub, repo_id, revision)
    response.headers.update(repo.headers)
    wanted = dict.fromkeys(p.strip("/") for p in paths)
    return [_entry(repo.files[p]) for p in wanted if p in repo.files]


# After the routes above: "{repo_id:path}" would match their paths too.
@router.get("/api/models/{repo_id:path}", dependencies=_READ)
def model_info_main(repo_id: str, response: Response, hub: HubDep) -> dict[str, Any]:
    """Hub model info of ``repo_id`` at ``main`` (its default tag)."""
    repo = _files(hub, repo_id, HUB_DEFAULT_REVISION)
    response.headers.update(repo.headers)
    return _model_info(repo)


@router.get("/{repo_id:path}/resolve/{revision}/{filename}", operation_id="hub_get_file", dependencies=_READ)
@router.head("/{repo_id:path}/resolve/{revision}/{filename}", operation_id="hub_head_file", dependencies=_READ)
def resolve_file(
    repo_id: str,
    revision: str,
    filename: str,
    request: Request,
    hub: HubDep,
) -> Response:
    """One file of the revision: ``X-Repo-Commit``, ``X-MCNC-Verified``, strong ``ETag``, 304,
    Range/206, HEAD (size and ETag before any byte, for ``model.safetensors`` too)."""
    repo = _files(hub, repo_id, revision)
    f = repo.files.get(filename)
    if f is None:
        raise EntryNotFoundError(
            f"{repo_id}@{revision} has no file {filename!r} (it has {sorted(repo.files)})", headers=repo.headers
        )
    headers = {
        **repo.headers,
        **f.headers,
        "Cache-Control": "public, max-age=31536000, immutable" if repo.rev.pinned else "no-cache",
    }
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    return file_response(request, f, headers, media)  # opened before the status line: an eviction cannot cut it
