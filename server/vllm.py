"""vLLM as the generation engine: our adapters, delivered to vLLM servers at run time.

The adapters API, ids, the Redis store, auth, limits and errors stay ours; a chat goes to one of the
vLLM servers (the one with the fewest requests in flight) with ``model=<adapter id>``, and its
server-sent events come back as our ``Delta``/``Finished`` events.

Delivery: an adapter is written once as a PEFT folder under ``T2L_VLLM_ADAPTER_DIR`` (a directory every
vLLM server can read) and registered with each server through ``POST /v1/load_lora_adapter`` before the
first request that needs it there; concurrent requests for one adapter share one load (single-flight).
A server that forgot it (restarted: "model ... does not exist") gets it again and the request is retried
once. Each server keeps at most ``T2L_VLLM_MAX_ADAPTERS`` registered; past that the least recently used
adapter not in use is unloaded. vLLM's own limits (``--max-loras`` per batch, ``--max-cpu-loras``) stay
vLLM's: it queues requests whose adapters do not fit a batch.
"""

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import httpx

from server.engine import Delta, Finished
from server.errors import APIError
from server.generation import ChatInput
from server.metrics import Metrics
from server.store import Record

log = logging.getLogger("t2l.vllm")


def _message(response_body: bytes) -> str:
    """The message of a vLLM error body (``{"error": {...}}`` or the older flat ``{"message": ...}``)."""
    try:
        body = json.loads(response_body)
    except ValueError:
        return response_body.decode(errors="replace")[:500]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(body)[:500]


def _missing_model(status: int, message: str) -> bool:
    return status == 404 or "does not exist" in message


class VLLMServer:
    """One vLLM endpoint: its HTTP client, served base model name and registered adapters (LRU)."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float | None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, connect=5.0)
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)
        self.base: str | None = None
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.loading: dict[str, asyncio.Task] = {}
        self.in_use: dict[str, int] = {}
        self.inflight = 0

    async def call(self, path: str, body: dict | None = None) -> httpx.Response:
        try:
            if body is None:
                return await self.client.get(path)
            return await self.client.post(path, json=body)
        except httpx.HTTPError as err:
            raise unreachable(self.url, err) from err

    async def base_model(self) -> str:
        """The name vLLM serves its base model under (its first model without a parent)."""
        if self.base is None:
            response = await self.call("/v1/models")
            if response.status_code != 200:
                raise APIError(502, f"vLLM at {self.url}: /v1/models answered {response.status_code}")
            models = response.json()["data"]
            self.base = next((m["id"] for m in models if not m.get("parent")), models[0]["id"])
        return self.base


def unreachable(url: str, err: Exception) -> APIError:
    return APIError(
        503,
        f"the generation engine (vLLM at {url}) is unreachable: {type(err).__name__}",
        code="engine_unavailable",
        headers={"Retry-After": "2"},
    )


class VLLMGeneration:
    """Reads one vLLM stream in a task of its own and turns it into our events."""

    def __init__(
        self,
        server: VLLMServer,
        response: httpx.Response,
        chat: ChatInput,
        metrics: Metrics,
        on_close,
    ):
        self.server, self.response = server, response
        self.chat, self.metrics, self._on_close = chat, metrics, on_close
        self.events: asyncio.Queue = asyncio.Queue()
        self._closed = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        reason, prompt_tokens, completion_tokens = "stop", 0, 0
        timeout = self.chat.sampling.timeout_s
        started = time.monotonic()
        first = True
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    self.events.put_nowait(Finished("error", prompt_tokens, completion_tokens, message))
                    return
                if chunk.get("usage"):
                    prompt_tokens = chunk["usage"]["prompt_tokens"]
                    completion_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if first:
                            self.metrics.first_token_seconds.observe(time.monotonic() - started)
                            first = False
                        self.events.put_nowait(Delta(text))
                    if choice.get("finish_reason"):
                        reason = choice["finish_reason"]
                if timeout is not None and time.monotonic() - started > timeout:
                    reason = "length"  # as our engine does: a generation past the timeout ends at its limit
                    break
            self.metrics.tokens.inc(completion_tokens)
            self.events.put_nowait(Finished(reason, prompt_tokens, completion_tokens))
        except (httpx.HTTPError, ValueError, KeyError) as err:
            log.warning("vLLM stream from %s broke: %s", self.server.url, err)
            message = f"the generation engine (vLLM) stream broke: {type(err).__name__}"
            self.events.put_nowait(Finished("error", prompt_tokens, completion_tokens, message))
        finally:
            await self.response.aclose()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._on_close()


class VLLMBackend:
    def __init__(
        self,
        urls: list[str],
        adapter_dir: Path,
        max_adapters: int,
        metrics: Metrics,
        api_key: str | None = None,
        timeout_s: float | None = None,
    ):
        self.servers = [VLLMServer(url, api_key, timeout_s) for url in urls]
        self.adapter_dir = adapter_dir
        self.max_adapters = max_adapters
        self.metrics = metrics
        self.writing: dict[str, asyncio.Task] = {}

    # ---- delivery

    async def _folder(self, record: Record) -> Path:
        """The adapter as a PEFT folder vLLM can read, written once (single-flight, atomic rename)."""
        folder = self.adapter_dir / record.id
        if (folder / "adapter_config.json").is_file():
            return folder
        task = self.writing.get(record.id)
        if task is None:
            task = asyncio.create_task(asyncio.to_thread(self._write, record, folder))
            self.writing[record.id] = task
            task.add_done_callback(lambda _: self.writing.pop(record.id, None))
        await asyncio.shield(task)
        return folder

    @staticmethod
    def _write(record: Record, folder: Path) -> None:
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        record.adapter.save_peft(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another writer (a replica of ours) got there first: its folder is the same
            shutil.rmtree(tmp, ignore_errors=True)

    async def _ensure(self, server: VLLMServer, record: Record) -> None:
        """Register the adapter with this server unless it is already (one load however many ask)."""
        if record.id in server.loaded:
            server.loaded.move_to_end(record.id)
            return
        task = server.loading.get(record.id)
        if task is None:
            task = asyncio.create_task(self._load(server, record))
            server.loading[record.id] = task
            task.add_done_callback(lambda _: server.loading.pop(record.id, None))
        await asyncio.shield(task)

    async def _load(self, server: VLLMServer, record: Record) -> None:
        folder = await self._folder(record)
        started = time.perf_counter()
        response = await server.call(
            "/v1/load_lora_adapter", {"lora_name": record.id, "lora_path": str(folder.resolve())}
        )
        message = _message(response.content) if response.status_code != 200 else ""
        if response.status_code != 200 and "already" not in message:
            raise APIError(502, f"vLLM at {server.url} could not load adapter {record.id}: {message}")
        self.metrics.vllm_loads.inc()
        self.metrics.vllm_load_seconds.observe(time.perf_counter() - started)
        server.loaded[record.id] = None
        await self._trim(server)

    async def _trim(self, server: VLLMServer) -> None:
        """Unload least recently used adapters (not in use) past ``max_adapters``."""
        idle = [a for a in server.loaded if not server.in_use.get(a)]
        for adapter_id in idle[: max(0, len(server.loaded) - self.max_adapters)]:
            server.loaded.pop(adapter_id, None)
            await self._unload(server, adapter_id)

    async def _unload(self, server: VLLMServer, adapter_id: str) -> None:
        try:
            await server.call("/v1/unload_lora_adapter", {"lora_name": adapter_id})
        except APIError as err:  # a server that is down has forgotten it anyway
            log.info("unloading %s from %s: %s", adapter_id, server.url, err.message)

    # ---- the Backend interface

    async def submit(self, chat: ChatInput) -> VLLMGeneration:
        server = min(self.servers, key=lambda s: s.inflight)
        record = chat.record
        body = {
            "messages": chat.messages,
            "max_tokens": chat.sampling.max_tokens,
            "temperature": chat.sampling.temperature,
            "top_p": chat.sampling.top_p,
            "stop": chat.sampling.stop or None,
            "seed": chat.sampling.seed,
            "ignore_eos": chat.sampling.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        server.inflight += 1
        if record:
            server.in_use[record.id] = server.in_use.get(record.id, 0) + 1

        def release() -> None:
            server.inflight -= 1
            if record:
                server.in_use[record.id] -= 1
                if not server.in_use[record.id]:
                    del server.in_use[record.id]

        try:
            response = await self._open(server, record, body)
        except BaseException:
            release()
            raise
        return VLLMGeneration(server, response, chat, self.metrics, release)

    async def _open(self, server: VLLMServer, record: Record | None, body: dict) -> httpx.Response:
        for attempt in (0, 1):
            if record:
                await self._ensure(server, record)
            body["model"] = record.id if record else await server.base_model()
            try:
                request = server.client.build_request("POST", "/v1/chat/completions", json=body)
                response = await server.client.send(request, stream=True)
            except httpx.HTTPError as err:
                raise unreachable(server.url, err) from err
            if response.status_code == 200:
                return response
            message = _message(await response.aread())
            await response.aclose()
            if record and attempt == 0 and _missing_model(response.status_code, message):
                log.warning(
                    "vLLM at %s lost adapter %s (restarted?): loading it again", server.url, record.id
                )
                server.loaded.pop(record.id, None)
                continue
            status = response.status_code
            if status >= 500 or status == 404:
                raise APIError(502, f"the generation engine (vLLM) failed: {message}", code="engine_error")
            raise APIError(status if status in (400, 413, 422, 429) else 400, f"vLLM: {message}")
        raise AssertionError("unreachable")  # the loop returns or raises

    async def forget(self, adapter_id: str) -> None:
        """Unload from every server (another replica of ours may have loaded it) and drop the folder."""
        for server in self.servers:
            server.loaded.pop(adapter_id, None)
            await self._unload(server, adapter_id)
        await asyncio.to_thread(shutil.rmtree, self.adapter_dir / adapter_id, True)

    async def stop(self) -> None:
        for server in self.servers:
            await server.client.aclose()
