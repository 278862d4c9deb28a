"""``GET|HEAD /models/{ref}/weights``: reconstructed weights as a safetensors stream, header first."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import EngineDep, StoreDep, require
from service.engine import Engine, Layout
from service.errors import BaseMissingError, ModelNotFoundError
from service.ranges import ClosingStreamingResponse, closing_stream, validate_request
from service.routers._openapi import RefPath, binary_responses
from service.storage import Store, parse_ref

router = APIRouter(tags=["weights"])


def _layout(store: Store, engine: Engine, ref: str, dtype: str) -> tuple[Layout, bool, str | None]:
    parsed = parse_ref(ref)
    digest = store.meta.resolve(parsed)
    rec = store.meta.get_bundle(digest) if digest else None
    if digest is None or rec is None:
        raise ModelNotFoundError(f"no model {ref!r}")
    if rec.base_sha256 is not None and store.meta.get_base(rec.base_sha256) is None:
        raise BaseMissingError(
            f"{ref!r} is a delta of base sha256:{rec.base_sha256} ({rec.base_name or 'unnamed'}), which this server "
            "does not hold: register it with POST /bases (client.push_base(state_dict)), or reconstruct where the "
            "base is (client.load(ref, base=state_dict)); its PEFT adapter needs no base (docs/service.md)"
        )
    # Before any status line: a bundle not yet checked against its fingerprint is checked in full (a
    # 422 if it fails: nothing failing it is served), and a tensor over the memory budget is a 507.
    if rec.verified_at is None:
        engine.ensure_verified(digest)  # InsufficientMemoryError first when it cannot fit
    lay = engine.layout(digest, dtype)  # InsufficientMemoryError
    return lay, parsed.digest is not None, engine.weights_digest(lay)


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
    store: StoreDep,
    engine: EngineDep,
    dtype: Literal["native", "float32", "float16", "bfloat16"] = "native",
) -> Response:
    """Reconstructed weights (safetensors); ETag, 304, Range/206 rebuilding only touched tensors."""
    lay, by_digest, weights_sha = await run_in_threadpool(_layout, store, engine, ref, dtype)
    headers = {
        "X-MCNC-Bundle-Digest": f"sha256:{lay.digest}",
        "X-MCNC-Numerics": engine.profile,
        "Cache-Control": "public, max-age=31536000, immutable" if by_digest else "no-cache",
    }
    if weights_sha is not None:  # known after a first full reconstruction; lets clients verify
        headers["X-MCNC-Weights-Digest"] = f"sha256:{weights_sha}"
    answer = validate_request(request.headers, lay.total, lay.etag, headers)
    if answer is None:
        return Response(status_code=304, headers=headers)
    status, start, end = answer
    media = "application/octet-stream"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media)
    if not engine.is_warm(lay, start, end):
        engine.admit()
    body = closing_stream(engine.stream(lay, start, end))
    return ClosingStreamingResponse(body, status_code=status, headers=headers, media_type=media)
