"""``GET|HEAD /models/{ref}/weights``: reconstructed weights as a safetensors stream, header first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from mcnc_core.bundle import Bundle
from service.catalog import Catalog
from service.deps import CatalogDep, EngineDep, require
from service.engine import Engine, Layout
from service.errors import BaseMissingError, ModelNotFoundError
from service.http import ranged_response
from service.openapi import RefPath, binary_responses
from service.storage import parse_ref

router = APIRouter(tags=["weights"])


def _layout(catalog: Catalog, engine: Engine, ref: str, dtype: str) -> tuple[Layout, Bundle, bool, str | None]:
    parsed = parse_ref(ref)
    rec = catalog.record(catalog.store.meta.resolve(parsed))
    if rec is None:
        raise ModelNotFoundError(f"no model {ref!r}")
    if not catalog.base_here(rec):
        raise BaseMissingError(
            f"{ref!r} is a delta of base sha256:{rec.base_sha256} ({rec.base_name or 'unnamed'}), which this server "
            "does not hold: register it with POST /bases (client.push_base(state_dict)), or reconstruct where the "
            "base is (client.load(ref, base=state_dict)); its PEFT adapter needs no base (docs/service.md)"
        )
    # Before any status line: a bundle not yet checked against its fingerprint is checked in full (a
    # 422 if it fails, now or before: nothing failing it is served), and a tensor over the memory
    # budget is a 507. The parsed bundle is kept for the whole response (a delete cannot cut it).
    catalog.ensure_verified(rec)
    bundle = catalog.bundle(rec.digest)
    lay = engine.layout(rec.digest, bundle, dtype)  # InsufficientMemoryError
    return lay, bundle, parsed.digest is not None, engine.weights_digest(lay)


_WEIGHTS = {"response_class": Response, "responses": binary_responses("the weights (safetensors, header first)")}


@router.get(
    "/models/{ref:path}/weights", operation_id="get_weights", dependencies=[Depends(require("read"))], **_WEIGHTS
)
@router.head(
    "/models/{ref:path}/weights", operation_id="head_weights", dependencies=[Depends(require("read"))], **_WEIGHTS
)
async def get_weights(
    ref: RefPath,
    request: Request,
    catalog: CatalogDep,
    engine: EngineDep,
    dtype: Literal["native", "float32", "float16", "bfloat16"] = "native",
) -> Response:
    """Reconstructed weights (safetensors); ETag, 304, Range/206 rebuilding only touched tensors."""
    lay, bundle, by_digest, weights_sha = await run_in_threadpool(_layout, catalog, engine, ref, dtype)
    headers = {
        "X-MCNC-Bundle-Digest": f"sha256:{lay.digest}",
        "X-MCNC-Numerics": engine.profile,
        "Cache-Control": "public, max-age=31536000, immutable" if by_digest else "no-cache",
    }
    if weights_sha is not None:  # known after a first full reconstruction; lets clients verify
        headers["X-MCNC-Weights-Digest"] = f"sha256:{weights_sha}"

    def open_body(start: int, end: int) -> Iterator[bytes | memoryview]:
        if not engine.is_warm(lay, start, end):
            engine.admit()  # 429 before the status line
        return engine.stream(lay, bundle, start, end)

    return ranged_response(request, total=lay.total, etag=lay.etag, headers=headers, open_body=open_body)
