"""``POST /bases`` (register a delta's base safetensors file), ``GET|HEAD /bases/{digest}``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from mcnc_core.errors import MCNCError
from mcnc_core.fingerprint import state_digest_file
from service.deps import SettingsDep, StoreDep, require
from service.errors import BaseNotFoundError, InvalidBaseError, check_upload_type
from service.routers._openapi import DigestPath, binary_body, binary_responses
from service.routers.bundles import blob_response, staged_upload
from service.schemas import BasePublic
from service.storage import BaseRecord, Staged, Store, parse_ref

router = APIRouter(tags=["bases"])


def _store_base(store: Store, tmp: Staged) -> tuple[BaseRecord, bool]:
    try:
        file_sha = tmp.finish()
        try:
            digest, n_tensors, n_params = state_digest_file(tmp.path)
        except MCNCError as exc:
            raise InvalidBaseError(str(exc)) from exc
        except Exception as exc:  # safetensors raises its own error types for malformed files
            raise InvalidBaseError(f"not a valid safetensors file: {exc}") from exc
        # Stored before or not: the store puts the blob (a no-op when present) and checks it under the row lock.
        rec = store.meta.get_base(digest) or BaseRecord(digest, file_sha, tmp.size, n_tensors, n_params, time.time())
        return store.add_base(tmp, rec)
    finally:
        tmp.discard()


@router.post(
    "/bases",
    status_code=201,
    response_model=BasePublic,
    dependencies=[Depends(require("write"))],
    openapi_extra=binary_body("the base's tensors as a safetensors file: curl --data-binary @base.safetensors"),
)
async def upload_base(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """Register a base (safetensors); addressed by the ``state_digest`` of its tensors."""
    check_upload_type(request.headers.get("content-type"), "safetensors file", "/bases")
    async with staged_upload(request, store, settings) as tmp:
        rec, created = await run_in_threadpool(_store_base, store, tmp)
    return JSONResponse(BasePublic(**vars(rec)).model_dump(), status_code=201 if created else 200)


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
    return blob_response(
        request, rec.size, rec.file_sha256, headers, lambda start, end: store.open_base(rec.digest, start, end)
    )
