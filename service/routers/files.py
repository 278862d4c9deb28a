"""``POST /files``: a sidecar file for Hub repos (config.json, tokenizer files, README.md), by sha256;
``GET|HEAD /files/{sha256}``: its bytes (a client asks HEAD before uploading bytes already stored)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.deps import SettingsDep, StoreDep, require
from service.errors import FileNotStoredError, PayloadTooLargeError
from service.http import check_upload_type, ranged_response, staged_upload
from service.hub.sidecars import store_file
from service.openapi import DigestPath, binary_body, binary_responses
from service.schemas import FilePublic
from service.storage import parse_ref

router = APIRouter(tags=["files"])


@router.post(
    "/files",
    status_code=201,
    response_model=FilePublic,
    responses={200: {"model": FilePublic, "description": "already stored (same body)"}},
    dependencies=[Depends(require("write"))],
    openapi_extra=binary_body("the file's bytes: curl --data-binary @config.json"),
)
async def upload_file(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """Store a sidecar file (201 first time, 200 for bytes already stored): ``{"sha256", "size"}``."""
    check_upload_type(request.headers.get("content-type"), "file", "/files")
    limit = min(settings.max_file_bytes, settings.max_upload_bytes)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"file is {declared} bytes, over the limit of {limit} (MCNC_MAX_FILE_BYTES)")
    bounded = settings.model_copy(update={"max_upload_bytes": limit})
    async with staged_upload(request, store, bounded) as tmp:
        rec, created = await run_in_threadpool(store_file, store, tmp, settings)
    return JSONResponse({"sha256": rec.sha256, "size": rec.size}, status_code=201 if created else 200)


_FILE = {"response_class": Response, "responses": binary_responses("the file's bytes as uploaded")}


@router.get("/files/{sha256}", operation_id="get_file", dependencies=[Depends(require("read"))], **_FILE)
@router.head("/files/{sha256}", operation_id="head_file", dependencies=[Depends(require("read"))], **_FILE)
def get_file(sha256: DigestPath, request: Request, store: StoreDep) -> Response:
    """A stored sidecar file by its sha256 (``ETag``: that sha256; immutable); 404 ``file_not_found``
    when it was never uploaded, so ``HEAD`` tells a client whether to upload it."""
    parsed = parse_ref(sha256)
    rec = store.meta.get_file(parsed.digest) if parsed.digest else None
    if rec is None:
        raise FileNotStoredError(f"no file sha256:{sha256.removeprefix('sha256:')}: upload it with POST /files")
    return ranged_response(
        request,
        total=rec.size,
        etag=rec.sha256,
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
        open_body=lambda start, end: store.open_file(rec.sha256, start, end),
    )
