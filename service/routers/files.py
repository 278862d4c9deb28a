"""``POST /files``: a sidecar file for Hub repos (config.json, tokenizer files, README.md), by sha256."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.deps import SettingsDep, StoreDep, require
from service.errors import PayloadTooLargeError
from service.http import check_upload_type, staged_upload
from service.hub.sidecars import store_file
from service.openapi import binary_body
from service.schemas import FilePublic

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
