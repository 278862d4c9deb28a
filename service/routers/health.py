"""``/health/live``, ``/health/ready`` and ``/metrics``."""

from __future__ import annotations

import torch
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import EngineDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(store: StoreDep, engine: EngineDep) -> JSONResponse:
    """Storage and device usable (503 otherwise); Redis state reported, not required."""

    def probe() -> dict[str, object]:
        checks: dict[str, object] = {}
        try:
            store.ping()
            checks["storage"] = "ok"
        except Exception as exc:
            checks["storage"] = f"error: {exc}"
        try:
            torch.zeros(1, device=engine.reconstructor.device).add_(1)
            checks["device"] = str(engine.reconstructor.device)
        except Exception as exc:
            checks["device"] = f"error: {exc}"
        checks["redis"] = engine.redis_state()
        return checks

    checks = await run_in_threadpool(probe)
    ok = checks["storage"] == "ok" and not str(checks["device"]).startswith("error")
    body: dict[str, object] = {"status": "ok" if ok else "unavailable", "checks": checks}
    if not ok:
        body["error"] = {"code": "not_ready", "message": "storage or device unusable"}
        return JSONResponse(body, status_code=503, headers={"X-Error-Code": "not_ready"})
    return JSONResponse(body)


_PROMETHEUS = {
    200: {
        "description": "Prometheus text exposition format, not JSON",
        "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    }
}


@router.get("/metrics", response_class=Response, responses=_PROMETHEUS)
def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
