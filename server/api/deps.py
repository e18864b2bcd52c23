"""Request dependencies: the running service and the task-description limits."""

from fastapi import Request

from server.errors import APIError
from server.service import Service


def service(request: Request) -> Service:
    return request.app.state.service


def check_description(svc: Service, text: str, param: str) -> None:
    if not text.strip():
        raise APIError(422, f"{param} is empty: describe the task in a sentence or two", param, "empty")
    cap = svc.settings.max_description_chars
    if len(text) > cap:
        raise APIError(413, f"{param} has {len(text)} characters; the limit is {cap}", param, "too_long")
