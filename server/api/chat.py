"""/v1/chat/completions, OpenAI-compatible, with an adapter from ``task_description`` or ``model``.

``model`` = the base model's name means no adapter; ``model`` = an adapter id uses that adapter;
``task_description`` generates (or reuses) the adapter for that task. ``stream: true`` sends OpenAI
server-sent-event chunks ending with ``data: [DONE]``. A new adapter made for a request is written
to Redis once that request's first token is out (``server.store``), not during its prefill.
"""

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from hypernet.chat import chat_ids
from server.api.deps import adapter_spec, service
from server.api.protocol import (
    AdapterRef,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    DeltaMessage,
    Usage,
)
from server.engine import Delta, Finished, Sampling
from server.errors import APIError, error_body
from server.generation import ChatInput, Generation
from server.service import Service
from server.store import Record

router = APIRouter(prefix="/v1", tags=["chat"])


def _nothing() -> None:
    return None


async def resolve_adapter(
    svc: Service, req: ChatRequest
) -> tuple[Record | None, AdapterRef | None, Callable[[], None]]:
    """The request's adapter (None for the base model), what the response says of it, and what to call
    once the request's first token is out (it releases a new adapter's held Redis write)."""
    if req.task_description is not None:
        if req.model != svc.base_name:
            raise APIError(
                422,
                "task_description makes its own adapter: set model to the base model",
                "model",
                "conflict",
            )
        task = req.task_description
        if isinstance(task, str):
            spec = adapter_spec(svc, task, None, "embedding", "task_description")
        elif isinstance(task, list):
            spec = adapter_spec(svc, None, task, "embedding", "task_description")
        else:
            spec = adapter_spec(svc, None, task.blend, task.mode, "task_description.blend")
        lookup = await svc.store.get_or_create(spec, hold_write=True)
        ref = AdapterRef(id=lookup.record.id, cached=lookup.cached or False)
        return lookup.record, ref, lookup.release_write
    if req.model == svc.base_name:
        return None, None, _nothing
    found = await svc.store.get(req.model)
    if found is None:
        raise APIError(
            404,
            f"model {req.model!r} is neither the base model nor a stored adapter",
            "model",
            "model_not_found",
        )
    record, tier = found
    return record, AdapterRef(id=record.id, cached=tier or False), _nothing


def sampling(svc: Service, req: ChatRequest) -> Sampling:
    name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    asked = req.max_completion_tokens or req.max_tokens
    cap = svc.settings.max_tokens_cap
    if asked is not None and asked > cap:
        raise APIError(422, f"{name}={asked} is over this server's cap of {cap}", name, "too_large")
    limit = asked or min(svc.settings.default_max_tokens, cap)
    return Sampling(
        limit,
        req.temperature,
        req.top_p,
        req.stops(),
        req.seed,
        req.ignore_eos,
        svc.settings.generation_timeout_s,
    )


def chat_messages(req: ChatRequest) -> list[dict[str, str]]:
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
    ]


def prompt_ids(svc: Service, messages: list[dict[str, str]]) -> list[int]:
    ids = chat_ids(svc.tokenizer, messages, generation_prompt=True)
    if len(ids) > svc.settings.max_prompt_tokens:
        limit = svc.settings.max_prompt_tokens
        message = f"the prompt has {len(ids)} tokens; the limit is {limit}"
        raise APIError(400, message, "messages", "context_length_exceeded")
    return ids


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    req: ChatRequest, svc: Annotated[Service, Depends(service)]
) -> ChatCompletion | StreamingResponse:
    arrived = time.monotonic()  # the engine's batch window counts from here (``Engine._arrivals``)
    params = sampling(svc, req)
    messages = chat_messages(req)
    prompt = prompt_ids(svc, messages)
    record, ref, started = await resolve_adapter(svc, req)
    try:
        generation = await svc.backend.submit(ChatInput(messages, prompt, record, params, arrived))
    except BaseException:
        started()
        raise
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            stream(events(generation, started), completion_id, created, req.model, ref, include_usage),
            media_type="text/event-stream",
        )
    text, finished = [], None
    async for event in events(generation, started):
        if isinstance(event, Delta):
            text.append(event.text)
        else:
            finished = event
    if finished.reason == "error":
        raise APIError(500, finished.error or "generation failed")
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=req.model,
        choices=[Choice(message=AssistantMessage(content="".join(text)), finish_reason=finished.reason)],
        usage=usage(finished),
        adapter=ref,
    )


async def events(generation: Generation, started: Callable[[], None]) -> AsyncIterator[Delta | Finished]:
    """The generation's events up to its ``Finished``; ``started`` is called at the first (or when the
    reader leaves before it), and the generation is closed when the reader is done or leaves."""
    try:
        while True:
            event = await generation.events.get()
            started()
            yield event
            if isinstance(event, Finished):
                return
    finally:
        started()
        await generation.close()


def usage(finished: Finished) -> Usage:
    total = finished.prompt_tokens + finished.completion_tokens
    return Usage(
        prompt_tokens=finished.prompt_tokens, completion_tokens=finished.completion_tokens, total_tokens=total
    )


async def stream(
    generation: AsyncIterator[Delta | Finished],
    completion_id: str,
    created: int,
    model: str,
    ref: AdapterRef | None,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE chunks as the engine produces text; a client that leaves cancels the generation."""

    def chunk(delta: DeltaMessage, finish: str | None = None, **extra) -> str:
        body = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)] if delta is not None else [],
            **extra,
        )
        return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

    try:
        yield chunk(DeltaMessage(role="assistant", content=""), adapter=ref)
        async for event in generation:
            if isinstance(event, Delta):
                yield chunk(DeltaMessage(content=event.text))
            elif event.reason == "error":
                yield f"data: {json.dumps(error_body(500, event.error or 'generation failed'))}\n\n"
            else:
                yield chunk(DeltaMessage(), event.reason)
                if include_usage:
                    yield chunk(None, usage=usage(event))
        yield "data: [DONE]\n\n"
    finally:
        await generation.aclose()
