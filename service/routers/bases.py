"""``POST /bases`` (register a base safetensors file, optionally under a repo name with sidecar files),
``GET|HEAD /bases/{digest}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from service.deps import CatalogDep, SettingsDep, StoreDep, require
from service.errors import BaseNotFoundError, InvalidRequestError
from service.http import check_upload_type, ranged_response, staged_upload
from service.hub.sidecars import parse_file_params
from service.openapi import DigestPath, binary_body, binary_responses
from service.schemas import BasePublic
from service.storage import parse_ref, validate_name

router = APIRouter(tags=["bases"])


@router.post(
    "/bases",
    status_code=201,
    response_model=BasePublic,
    responses={200: {"model": BasePublic, "description": "base already stored (same tensors); name set if given"}},
    dependencies=[Depends(require("write"))],
    openapi_extra=binary_body("the base's tensors as a safetensors file: curl --data-binary @base.safetensors"),
)
async def upload_base(
    request: Request,
    store: StoreDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=257, description="repo name (org/base) to serve it under")] = None,
    file: Annotated[list[str], Query(description="<filename>:<sha256> of a file from POST /files")] = [],  # noqa: B006
) -> JSONResponse:
    """Register a base (safetensors); addressed by the ``state_digest`` of its tensors (201 first time,
    200 for tensors already stored).

    With ``name``, the repo name also points at this base, with the sidecar files ``file=`` (config.json,
    tokenizer files, README.md, uploaded first with ``POST /files``), in the same transaction; the base
    is then served as a whole-model Hub repo. Registering a name again moves it to the new base and
    replaces its files. A name that is a bundle repo (it has tags) is refused (409 ``conflict``).
    """
    check_upload_type(request.headers.get("content-type"), "safetensors file", "/bases?name=<org/base>")
    if name is not None:
        validate_name(name)
    files = parse_file_params(file, settings)  # service/hub/sidecars.py
    if files and name is None:
        raise InvalidRequestError("file= given without name: files are attached to a base's repo name")
    if name is not None:  # before the body is read: a refused name costs no upload
        await run_in_threadpool(catalog.check_base_name, name, files)
    async with staged_upload(request, store, settings) as tmp:
        rec, created = await run_in_threadpool(catalog.ingest_base, tmp, name, files)
    body = await run_in_threadpool(catalog.base_public, rec, name, files)
    waiting = BackgroundTask(catalog.verify_waiting, rec.digest)  # deltas stored before it (N6), after the answer
    return JSONResponse(body.model_dump(), status_code=201 if created else 200, background=waiting)


_BASE = {"response_class": Response, "responses": binary_responses("the base (safetensors)")}


@router.get("/bases/{digest}", operation_id="get_base", dependencies=[Depends(require("read"))], **_BASE)
@router.head("/bases/{digest}", operation_id="head_base", dependencies=[Depends(require("read"))], **_BASE)
def get_base(digest: DigestPath, request: Request, store: StoreDep) -> Response:
    """The base file as uploaded (ETag: the file's sha256)."""
    parsed = parse_ref(digest)
    rec = store.meta.get_base(parsed.digest) if parsed.digest else None
    if rec is None:
        raise BaseNotFoundError(f"no base {digest!r}")
    headers = {"X-MCNC-Base-Digest": f"sha256:{rec.digest}", "Cache-Control": "public, max-age=31536000, immutable"}
    return ranged_response(
        request,
        total=rec.size,
        etag=rec.file_sha256,
        headers=headers,
        open_body=lambda start, end: store.open_base(rec.digest, start, end),
    )
