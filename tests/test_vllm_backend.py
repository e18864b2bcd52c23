"""The vLLM backend's delivery rules against a scripted stand-in for vLLM's HTTP API (fast; the real vLLM
is in test_vllm.py): LRU trimming past T2L_VLLM_MAX_ADAPTERS, error mapping, and settings."""

import asyncio
import json
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from server.engine import Delta, Finished, Sampling
from server.errors import APIError
from server.generation import ChatInput
from server.metrics import Metrics
from server.settings import ServerSettings
from server.store import Record
from server.vllm import VLLMBackend
from tests.server_harness import free_port


def fake_vllm(registered: dict[str, str], log: list) -> FastAPI:
    """vLLM's runtime-LoRA endpoints and a chat that streams the model's name word by word."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"data": [{"id": "base", "parent": None}] + [{"id": k, "parent": "base"} for k in registered]}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> JSONResponse:
        body = await request.json()
        log.append(("load", body["lora_name"]))
        registered[body["lora_name"]] = body["lora_path"]
        return JSONResponse("ok")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> JSONResponse:
        name = (await request.json())["lora_name"]
        log.append(("unload", name))
        if registered.pop(name, None) is None:
            return JSONResponse({"error": {"message": f"The lora adapter '{name}' cannot be found."}}, 404)
        return JSONResponse("ok")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body["model"]
        if model != "base" and model not in registered:
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist."}}, 404)
        if body["max_tokens"] > 100:
            return JSONResponse({"error": {"message": "max_tokens is too large"}}, 400)

        def events():
            for word in ["answer", "from", model]:
                yield f"data: {json.dumps({'choices': [{'delta': {'content': word + ' '}}]})}\n\n"
            yield f"data: {json.dumps({'choices': [{'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def vllm_stand_in():
    registered: dict[str, str] = {}
    log: list = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake_vllm(registered, log), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", registered, log
    server.should_exit = True
    thread.join(timeout=10)


class FakeAdapter:
    def save_peft(self, folder):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        return folder


def record(name: str) -> Record:
    return Record(id=name, adapter=FakeAdapter(), created=0)  # type: ignore[arg-type]


async def answer(backend: VLLMBackend, rec: Record | None, max_tokens: int = 16) -> tuple[str, Finished]:
    generation = await backend.submit(
        ChatInput([{"role": "user", "content": "hi"}], [1], rec, Sampling(max_tokens))
    )
    text = []
    while True:
        event = await generation.events.get()
        if isinstance(event, Delta):
            text.append(event.text)
        else:
            await generation.close()
            return "".join(text), event


def test_delivery_trims_reloads_and_maps_errors(vllm_stand_in, tmp_path):
    url, registered, log = vllm_stand_in

    async def scenario() -> None:
        backend = VLLMBackend([url], tmp_path / "adapters", max_adapters=2, metrics=Metrics())
        text, done = await answer(backend, None)
        assert text == "answer from base " and (done.reason, done.completion_tokens) == ("stop", 3)
        for name in ("a", "b", "c"):
            assert (await answer(backend, record(name)))[0] == f"answer from {name} "
        assert set(registered) == {"b", "c"} and ("unload", "a") in log  # the least recently used went
        registered.clear()  # vLLM restarted: it knows nothing
        assert (await answer(backend, record("c")))[0] == "answer from c "
        assert log.count(("load", "c")) == 2
        with pytest.raises(APIError) as err:
            await answer(backend, record("c"), max_tokens=500)
        assert err.value.status == 400 and "too large" in err.value.message
        await backend.forget("c")
        assert "c" not in registered and not (tmp_path / "adapters" / "c").exists()
        await backend.stop()
        down = VLLMBackend([f"http://127.0.0.1:{free_port()}"], tmp_path / "x", 2, Metrics())
        with pytest.raises(APIError) as err:
            await answer(down, None)
        assert err.value.status == 503 and err.value.code == "engine_unavailable"
        await down.stop()

    asyncio.run(scenario())


def test_vllm_settings_are_checked_at_start():
    with pytest.raises(ValidationError, match="T2L_ENGINE=vllm needs T2L_VLLM_URL"):
        ServerSettings(engine="vllm")
    with pytest.raises(ValidationError, match="must start with http"):
        ServerSettings(engine="vllm", vllm_url="localhost:8001")
    settings = ServerSettings(engine="vllm", vllm_url="http://a:1, http://b:2")
    assert settings.vllm_url == ["http://a:1", "http://b:2"]
    assert settings.vllm_adapters == settings.state_dir / "vllm-adapters"
