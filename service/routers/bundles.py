"""``POST /bundles``, ``GET|HEAD /bundles/{ref}``, ``DELETE /bundles/{id}``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

import mcnc_core
from service.config import Settings
from service.deps import AdaptersDep, EngineDep, SettingsDep, StoreDep, require
from service.engine import Engine
from service.errors import (
    BundleNotFoundError,
    InvalidBundleError,
    InvalidRequestError,
    LimitExceededError,
    PayloadTooLargeError,
    RequestTimeoutError,
    check_upload_type,
)
from service.http_guard import UploadBudget, UploadSlot
from service.ranges import ClosingStreamingResponse, closing_stream, validate_request
from service.routers._openapi import DigestPath, RefPath, binary_body, binary_responses
from service.schemas import BundlePublic, TagPublic
from service.storage import (
    DEFAULT_TAG,
    BlobReader,
    BundleRecord,
    Staged,
    Store,
    parse_ref,
    validate_name,
    validate_tag,
)

router = APIRouter(tags=["bundles"])
_BUFFER = 1 << 20


TAGS_IN_RECORD = 100  # a bundle's record lists this many of its tags; GET /models?digest= pages through all


def bundle_public(store: Store, rec: BundleRecord) -> BundlePublic:
    """The JSON record of ``rec``, with its first ``TAGS_IN_RECORD`` tags and their total count."""
    page, total = store.meta.list_tags(limit=TAGS_IN_RECORD, offset=0, digest=rec.digest)
    return BundlePublic(
        id=rec.digest,
        digest=f"sha256:{rec.digest}",
        size=rec.size,
        num_params=rec.num_params,
        reconstructed_bytes=rec.reconstructed_nbytes,
        stored_numbers=rec.stored_numbers,
        compression_ratio=rec.reconstructed_nbytes / max(rec.size, 1),
        mode=rec.mode,
        base=rec.base_sha256,
        created_at=rec.created_at,
        metadata=rec.metadata,
        tags=[TagPublic(**vars(t)) for t in page],
        tag_count=total,
        tags_truncated=total > len(page),
    )


async def receive_body(request: Request, store: Store, settings: Settings, slot: UploadSlot) -> Staged:
    """Stream the request body into a staged temp file, refusing past ``MCNC_MAX_UPLOAD_BYTES`` (413),
    past the staging budget ``slot`` draws on (507), or when no byte comes for ``MCNC_READ_TIMEOUT`` (408)."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise PayloadTooLargeError(f"body is {declared} bytes, over the limit of {limit} (MCNC_MAX_UPLOAD_BYTES)")
        slot.reserve_total(int(declared))  # refused before a byte is written
    tmp = await run_in_threadpool(store.stage)
    try:
        buf = bytearray()
        chunks = request.stream()
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), settings.read_timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
                raise RequestTimeoutError(
                    f"no body bytes for {settings.read_timeout:g} s after {tmp.size + len(buf)} "
                    "(MCNC_READ_TIMEOUT): the upload was abandoned; send the body without pauses"
                ) from None
            if tmp.size + len(buf) + len(chunk) > limit:
                raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes (MCNC_MAX_UPLOAD_BYTES)")
            buf += chunk
            if len(buf) >= _BUFFER:
                slot.reserve_total(tmp.size + len(buf))
                await run_in_threadpool(tmp.write, bytes(buf))
                buf.clear()
        if buf:
            slot.reserve_total(tmp.size + len(buf))
            await run_in_threadpool(tmp.write, bytes(buf))
        if tmp.size == 0:
            raise InvalidRequestError("empty body: send the bundle file as application/octet-stream")
    except BaseException:
        await run_in_threadpool(tmp.discard)
        raise
    return tmp


@asynccontextmanager
async def staged_upload(request: Request, store: Store, settings: Settings) -> AsyncIterator[Staged]:
    """The request body staged on local disk, within the upload budgets (``receive_body``); the
    upload's slot and staging bytes are released on exit, when the caller has stored or refused it."""
    budget: UploadBudget = request.app.state.uploads
    with budget.slot() as slot:
        tmp = await receive_body(request, store, settings, slot)
        try:
            yield tmp
        finally:
            await run_in_threadpool(tmp.discard)


def _store_bundle(
    store: Store, engine: Engine, settings: Settings, tmp: Staged, name: str | None, tag: str
) -> tuple[BundleRecord, bool]:
    """Validate with the strict reader, check the weights against the fingerprint, then commit blob and
    metadata; the temp file never survives.

    Every allocation the bundle can cause is bounded before it happens: the reader's limits (file,
    parameters, generator size) and the largest tensor against the reconstruction memory budget.
    Up to ``verify_max_params`` the bundle is reconstructed and checked against its fingerprint here
    (422 ``fingerprint_mismatch``); a delta is checked when its base is registered. Others are
    checked before their weights are first served.

    A delta bundle is accepted without its base: clients that hold the base reconstruct locally,
    adapters need none; only server-side weights need it (409 ``base_missing`` until registered).
    """
    try:
        digest = tmp.finish()
        rec = store.meta.get_bundle(digest)
        if rec is None:  # new bytes: validate with the strict reader (stored bytes were validated before)
            limits = mcnc_core.ReadLimits(
                max_bytes=settings.max_upload_bytes,
                max_params=settings.max_params,
                max_tensor_params=engine.max_tensor_params,
            )
            try:
                bundle = mcnc_core.load_bundle(tmp.path, limits=limits)
            except mcnc_core.BundleLimitError as exc:
                raise LimitExceededError(
                    f"bundle refused: {exc} (MCNC_MAX_PARAMS={settings.max_params}; a tensor may have up to "
                    f"{engine.max_tensor_params:,} parameters under MCNC_RECONSTRUCTION_MEMORY_BYTES="
                    f"{engine.memory_budget.total})"
                ) from exc
            except mcnc_core.MCNCError as exc:
                raise InvalidBundleError(f"not a valid MCNC bundle ({type(exc).__name__}): {exc}") from exc
            verified_at = None
            base_here = bundle.base is None or store.meta.get_base(bundle.base.sha256) is not None
            if base_here and bundle.num_params <= settings.verify_max_params:
                engine.verify(bundle)  # FingerprintMismatchError: 422, nothing stored
                verified_at = time.time()
            rec = BundleRecord(
                digest=digest,
                size=tmp.size,
                num_params=bundle.num_params,
                reconstructed_nbytes=bundle.reconstructed_nbytes,
                stored_numbers=bundle.stored_numbers,
                mode=bundle.mode,
                base_sha256=bundle.base.sha256 if bundle.base else None,
                base_name=bundle.base.name if bundle.base else None,
                created_at=time.time(),
                metadata_json=json.dumps(bundle.metadata, sort_keys=True),
                verified_at=verified_at,
            )
        # Also for stored bytes: the store re-checks the blob inside the transaction, so an upload
        # racing a delete of the same digest ends with both row and blob (or neither).
        return store.add_bundle(tmp, rec, tag=(name, tag) if name is not None else None)
    finally:
        tmp.discard()


@router.post(
    "/bundles",
    status_code=201,
    response_model=BundlePublic,
    dependencies=[Depends(require("write"))],
    openapi_extra=binary_body("the bundle file (.mcnc): curl --data-binary @model.mcnc"),
)
async def upload_bundle(
    request: Request,
    store: StoreDep,
    engine: EngineDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=128)] = None,
    tag: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONResponse:
    """Store a bundle (201 first time, 200 for bytes already stored); optionally name:tag it."""
    check_upload_type(request.headers.get("content-type"), "bundle file", "/bundles?name=<name>&tag=<tag>")
    if name is not None:
        validate_name(name)
    if tag is not None:
        if name is None:
            raise InvalidRequestError("tag given without name")
        validate_tag(tag)
    async with staged_upload(request, store, settings) as tmp:
        rec, created = await run_in_threadpool(_store_bundle, store, engine, settings, tmp, name, tag or DEFAULT_TAG)
    body = bundle_public(store, rec)
    return JSONResponse(body.model_dump(), status_code=201 if created else 200, headers={"ETag": f'"{rec.digest}"'})


def blob_response(
    request: Request, size: int, etag: str, headers: dict[str, str], open_range: Callable[[int, int], BlobReader]
) -> Response:
    """A stored blob of ``size`` bytes with ETag/304, Range/206/416, HEAD.

    ``open_range(start, end)`` opens the bytes before the status is sent: a blob deleted after its
    record was read answers 404, never a 200 cut short.
    """
    headers = dict(headers)
    answer = validate_request(request.headers, size, etag, headers)
    if answer is None:
        return Response(status_code=304, headers=headers)
    status, start, end = answer
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    reader = open_range(start, end)
    return ClosingStreamingResponse(
        closing_stream(reader), status_code=status, headers=headers, media_type="application/octet-stream"
    )


_BUNDLE = {"response_class": Response, "responses": binary_responses("the bundle file")}


@router.get("/bundles/{ref:path}", operation_id="get_bundle", dependencies=[Depends(require("read"))], **_BUNDLE)
@router.head("/bundles/{ref:path}", operation_id="head_bundle", dependencies=[Depends(require("read"))], **_BUNDLE)
def get_bundle(ref: RefPath, request: Request, store: StoreDep) -> Response:
    """The raw bundle file."""
    parsed = parse_ref(ref)
    digest = store.meta.resolve(parsed)
    rec = store.meta.get_bundle(digest) if digest else None
    if rec is None:
        raise BundleNotFoundError(f"no bundle {ref!r}")
    cache = "public, max-age=31536000, immutable" if parsed.digest else "no-cache"
    headers = {"X-MCNC-Bundle-Digest": f"sha256:{rec.digest}", "Cache-Control": cache}
    return blob_response(
        request, rec.size, rec.digest, headers, lambda start, end: store.open_bundle(rec.digest, start, end)
    )


@router.delete("/bundles/{id}", status_code=204, dependencies=[Depends(require("admin"))])
def delete_bundle(
    id: DigestPath, store: StoreDep, engine: EngineDep, adapters: AdaptersDep, force: bool = False
) -> Response:
    """Delete a bundle by digest; 409 while names point at it unless ``force=true``."""
    parsed = parse_ref(id)
    if parsed.digest is None:
        raise InvalidRequestError(f"DELETE /bundles takes a digest, got {id!r}; use DELETE /models/{{ref}} for names")
    store.delete_bundle(parsed.digest, force=force)  # BundleNotFoundError, ConflictError (names point at it)
    engine.forget(parsed.digest)
    adapters.forget(parsed.digest)
    return Response(status_code=204)
