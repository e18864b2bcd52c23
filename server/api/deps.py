"""Request dependencies: the running service and the task-description limits."""

from fastapi import Request

from hypernet.blend import Blend
from hypernet.errors import T2LError
from server.api.protocol import BlendPart
from server.errors import APIError
from server.service import Service


async def service(request: Request) -> Service:
    """Async so that FastAPI calls it on the event loop: a plain function would be run on its thread
    pool, a thread hop per request (about a quarter of an L1 hit's time in the app)."""
    return request.app.state.service


def adapter_spec(
    svc: Service, description: str | None, blend: list[BlendPart] | None, mode: str, param: str
) -> str | Blend:
    """What to make an adapter of: a checked description, or a checked, normalised blend."""
    if blend is None:
        check_description(svc, description or "", param)
        return description or ""
    for i, part in enumerate(blend):
        check_description(svc, part.description, f"{param}[{i}].description")
    try:
        return Blend.of([(p.description, p.weight) for p in blend], mode)
    except T2LError as err:
        raise APIError(422, str(err), param, "invalid_blend") from err


def check_description(svc: Service, text: str, param: str) -> None:
    if not text.strip():
        raise APIError(422, f"{param} is empty: describe the task in a sentence or two", param, "empty")
    cap = svc.settings.max_description_chars
    if len(text) > cap:
        raise APIError(413, f"{param} has {len(text)} characters; the limit is {cap}", param, "too_long")
