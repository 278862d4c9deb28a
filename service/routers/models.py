"""``GET /models`` (names, or what is loaded), ``GET /models/{ref}`` (with its tag's sidecar files),
``GET|HEAD /models/{ref}/files/{filename}`` (one sidecar's bytes), ``DELETE /models/{ref}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.catalog import TAGS_IN_RECORD
from service.deps import CatalogDep, EngineDep, StoreDep, require
from service.engine import Engine
from service.errors import FileNotStoredError, InvalidRequestError, ModelNotFoundError
from service.http import ranged_response
from service.openapi import RefPath, binary_responses
from service.schemas import LoadedModel, LoadedModels, ModelPublic, ModelsPublic, SidecarPublic, TagPublic
from service.storage import FileRecord, Ref, Store, parse_ref
from service.storage.refs import FILENAME_PATTERN

router = APIRouter(tags=["models"])


def _loaded(store: Store, engine: Engine) -> list[LoadedModel]:
    rows = engine.loaded()
    out = []
    for key, tier, nbytes, last in sorted(rows, key=lambda r: -r[3]):
        digest, _, rest = key.partition(":")
        dtype = rest.partition(":")[0]
        tags = [f"{t.name}:{t.tag}" for t in store.meta.tags_for(digest, limit=TAGS_IN_RECORD)]
        out.append(LoadedModel(digest=digest, dtype=dtype, key=key, tier=tier, bytes=nbytes, last_used=last, tags=tags))
    return out


@router.get("/models", response_model=ModelsPublic | LoadedModels, dependencies=[Depends(require("read"))])
async def list_models(
    store: StoreDep,
    engine: EngineDep,
    loaded: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,  # SQLite's OFFSET is a 64-bit int; keep far inside
    digest: Annotated[
        str | None, Query(description="only the names:tags pointing at this bundle id", max_length=71)
    ] = None,
) -> ModelsPublic | LoadedModels:
    """Names and tags with their digests (paginated, optionally of one bundle), or what each tier holds."""
    if loaded:
        return LoadedModels(items=await run_in_threadpool(_loaded, store, engine))
    if digest is not None:
        parsed = parse_ref(digest)
        if parsed.digest is None:
            raise InvalidRequestError(f"digest={digest!r}: expected a bundle id (64 hex digits or sha256:<hex>)")
        digest = parsed.digest
    tags, total = await run_in_threadpool(store.meta.list_tags, limit=limit, offset=offset, digest=digest)
    return ModelsPublic(items=[TagPublic(**vars(t)) for t in tags], total=total, limit=limit, offset=offset)


def _sidecars(store: Store, parsed: Ref) -> list[FileRecord]:
    """The sidecar files of the tag ``parsed`` names; none for a digest (files belong to tags)."""
    if parsed.digest is not None or parsed.name is None or parsed.tag is None:
        return []
    return store.meta.tag_files(parsed.name, parsed.tag)


_FILE = {"response_class": Response, "responses": binary_responses("the sidecar file, as uploaded")}
FilenamePath = Annotated[
    str, Path(description="a sidecar file name (GET /models/{ref} lists them)", pattern=f"^{FILENAME_PATTERN}$")
]


# Before GET /models/{ref:path}, which would match these paths too.
@router.get("/models/{ref:path}/files/{filename}", operation_id="get_model_file",
            dependencies=[Depends(require("read"))], **_FILE)  # fmt: skip
@router.head("/models/{ref:path}/files/{filename}", operation_id="head_model_file",
             dependencies=[Depends(require("read"))], **_FILE)  # fmt: skip
def get_model_file(ref: RefPath, filename: FilenamePath, request: Request, store: StoreDep) -> Response:
    """One sidecar file of the tag ``ref`` names: ETag (its sha256), 304, Range/206, HEAD."""
    parsed = parse_ref(ref)
    if parsed.digest is not None:
        raise InvalidRequestError(f"{ref!r} is a digest: sidecar files belong to tags, ask for name:tag")
    files = _sidecars(store, parsed)
    f = next((f for f in files if f.name == filename), None)
    if f is None:
        if store.meta.resolve(parsed) is None:
            raise ModelNotFoundError(f"no model {ref!r}")
        raise FileNotStoredError(f"{parsed} has no file {filename!r} (it has {[f.name for f in files]})")
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    headers = {"Cache-Control": "no-cache", "X-MCNC-File-Sha256": f.sha256}
    return ranged_response(
        request,
        total=f.size,
        etag=f.sha256,
        headers=headers,
        open_body=lambda start, end: store.open_file(f.sha256, start, end),
        media_type=media,
    )


@router.get("/models/{ref:path}", response_model=ModelPublic, dependencies=[Depends(require("read"))])
def get_model(ref: RefPath, store: StoreDep, catalog: CatalogDep, engine: EngineDep) -> ModelPublic:
    """Metadata of the bundle ``ref`` resolves to, with the sidecar files of its tag."""
    parsed = parse_ref(ref)
    digest = store.meta.resolve(parsed)
    rec = store.meta.get_bundle(digest) if digest else None
    if rec is None:
        raise ModelNotFoundError(f"no model {ref!r}")
    tiers = sorted({m.tier for m in _loaded(store, engine) if m.digest == rec.digest})
    files = [SidecarPublic(name=f.name, size=f.size, sha256=f.sha256) for f in _sidecars(store, parsed)]
    return ModelPublic(**catalog.public(rec).model_dump(), loaded=tiers, files=files)


@router.delete("/models/{ref:path}", dependencies=[Depends(require("admin"))])
def delete_model(ref: RefPath, store: StoreDep) -> dict[str, str]:
    """Remove a name:tag (the bundle stays; delete it with ``DELETE /bundles/{id}``)."""
    parsed = parse_ref(ref)
    if parsed.digest is not None:
        raise InvalidRequestError("DELETE /models takes name or name:tag; delete digests with DELETE /bundles/{id}")
    assert parsed.name is not None and parsed.tag is not None
    rec = store.meta.delete_tag(parsed.name, parsed.tag)
    if rec is None:
        raise ModelNotFoundError(f"no model {parsed.name}:{parsed.tag}")
    return {"deleted": f"{parsed.name}:{parsed.tag}", "digest": f"sha256:{rec.digest}"}
