"""The web playground at ``/``: static files (no build step, nothing fetched from elsewhere) and the
little it needs to start: the base model's name, whether keys are required, and example descriptions."""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from hypernet.data.choice import benchmark_descriptions
from server.api.deps import service
from server.service import Service

STATIC = Path(__file__).resolve().parents[1] / "static"
BENCHMARKS = ("arc_challenge", "arc_easy", "boolq", "gsm8k", "humaneval", "mbpp", "openbookqa")

router = APIRouter(tags=["playground"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/playground/config", include_in_schema=False)
async def config(request: Request, svc: Annotated[Service, Depends(service)]) -> dict:
    """T2L's benchmark descriptions (two each) from the data folder, when it is there."""
    examples = [
        {"name": name, "description": text}
        for name in BENCHMARKS
        for text in benchmark_descriptions(svc.settings.data_dir, name)[:2]
    ]
    return {"base_model": svc.base_name, "auth": request.app.state.auth, "examples": examples}
