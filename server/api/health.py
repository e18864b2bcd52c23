"""/healthz (the process is alive) and /readyz (models loaded; Redis reachable or degraded)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    svc = getattr(request.app.state, "service", None)
    if svc is None or not hasattr(svc, "store"):
        return JSONResponse({"status": "starting"}, 503)
    redis_ok = await svc.store.ping()
    return JSONResponse(
        {
            "status": "ready" if redis_ok else "degraded",
            "redis": "ok" if redis_ok else "unreachable",
            "checkpoint": svc.checkpoint.id,
            "checkpoint_status": svc.checkpoint.status,
        }
    )
