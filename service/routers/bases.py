"""``POST /bases`` (register a delta's base safetensors file), ``GET|HEAD /bases/{digest}``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from service.deps import CatalogDep, SettingsDep, StoreDep, require
from service.errors import BaseNotFoundError
from service.http import check_upload_type, ranged_response, staged_upload
from service.openapi import DigestPath, binary_body, binary_responses
from service.schemas import BasePublic
from service.storage import parse_ref

router = APIRouter(tags=["bases"])


@router.post(
    "/bases",
    status_code=201,
    response_model=BasePublic,
    dependencies=[Depends(require("write"))],
    openapi_extra=binary_body("the base's tensors as a safetensors file: curl --data-binary @base.safetensors"),
)
async def upload_base(request: Request, store: StoreDep, catalog: CatalogDep, settings: SettingsDep) -> JSONResponse:
    """Register a base (safetensors); addressed by the ``state_digest`` of its tensors."""
    check_upload_type(request.headers.get("content-type"), "safetensors file", "/bases")
    async with staged_upload(request, store, settings) as tmp:
        rec, created = await run_in_threadpool(catalog.ingest_base, tmp)
    waiting = BackgroundTask(catalog.verify_waiting, rec.digest)  # deltas stored before it (N6), after the answer
    return JSONResponse(BasePublic(**vars(rec)).model_dump(), status_code=201 if created else 200, background=waiting)


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
