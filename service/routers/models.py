"""``GET /models`` (names, or what is loaded), ``GET /models/{ref}``, ``DELETE /models/{ref}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from service.catalog import TAGS_IN_RECORD
from service.deps import CatalogDep, EngineDep, StoreDep, require
from service.engine import Engine
from service.errors import InvalidRequestError, ModelNotFoundError
from service.openapi import RefPath
from service.schemas import LoadedModel, LoadedModels, ModelPublic, ModelsPublic, TagPublic
from service.storage import Store, parse_ref

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


@router.get("/models/{ref:path}", response_model=ModelPublic, dependencies=[Depends(require("read"))])
def get_model(ref: RefPath, store: StoreDep, catalog: CatalogDep, engine: EngineDep) -> ModelPublic:
    """Metadata of the bundle ``ref`` resolves to."""
    digest = store.meta.resolve(parse_ref(ref))
    rec = store.meta.get_bundle(digest) if digest else None
    if rec is None:
        raise ModelNotFoundError(f"no model {ref!r}")
    tiers = sorted({m.tier for m in _loaded(store, engine) if m.digest == rec.digest})
    return ModelPublic(**catalog.public(rec).model_dump(), loaded=tiers)


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
