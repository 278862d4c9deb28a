"""``POST /bundles``, ``GET|HEAD /bundles/{ref}``, ``DELETE /bundles/{id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.deps import CatalogDep, SettingsDep, StoreDep, require
from service.errors import BundleNotFoundError, InvalidRequestError
from service.http import check_upload_type, ranged_response, staged_upload
from service.hub.sidecars import parse_file_params
from service.openapi import DigestPath, RefPath, binary_body, binary_responses
from service.schemas import BundlePublic
from service.storage import DEFAULT_TAG, parse_ref, validate_name, validate_tag

router = APIRouter(tags=["bundles"])


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
    catalog: CatalogDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=128)] = None,
    tag: Annotated[str | None, Query(max_length=128)] = None,
    file: Annotated[list[str], Query(description="<filename>:<sha256> of a file from POST /files")] = [],  # noqa: B006
) -> JSONResponse:
    """Store a bundle (201 first time, 200 for bytes already stored); optionally name:tag it."""
    check_upload_type(request.headers.get("content-type"), "bundle file", "/bundles?name=<name>&tag=<tag>")
    if name is not None:
        validate_name(name)
    if tag is not None:
        if name is None:
            raise InvalidRequestError("tag given without name")
        validate_tag(tag)
    files = parse_file_params(file, settings)  # sidecars for the tag (service/hub/sidecars.py)
    if files and name is None:
        raise InvalidRequestError("file= given without name: files are attached to a name:tag")
    async with staged_upload(request, store, settings) as tmp:
        rec, created = await run_in_threadpool(catalog.ingest, tmp, name, tag or DEFAULT_TAG, files)
    body = await run_in_threadpool(catalog.public, rec)
    return JSONResponse(body.model_dump(), status_code=201 if created else 200, headers={"ETag": f'"{rec.digest}"'})


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
    return ranged_response(
        request,
        total=rec.size,
        etag=rec.digest,
        headers=headers,
        open_body=lambda start, end: store.open_bundle(rec.digest, start, end),
    )


@router.delete("/bundles/{id}", status_code=204, dependencies=[Depends(require("admin"))])
def delete_bundle(id: DigestPath, catalog: CatalogDep, force: bool = False) -> Response:
    """Delete a bundle by digest; 409 while names point at it unless ``force=true``."""
    parsed = parse_ref(id)
    if parsed.digest is None:
        raise InvalidRequestError(f"DELETE /bundles takes a digest, got {id!r}; use DELETE /models/{{ref}} for names")
    catalog.delete(parsed.digest, force=force)  # BundleNotFoundError, ConflictError (names point at it)
    return Response(status_code=204)
