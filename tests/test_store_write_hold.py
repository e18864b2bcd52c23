"""A new adapter's Redis write waits for its chat request's first token (it would compete with the
prefill for the cores), and is never lost: released, timed out, or flushed, it is written."""

import asyncio
import json
import time

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from hypernet.generator import AdapterGenerator
from server import store as store_module
from server.store import KEY, AdapterStore, L1Cache
from tests.server_harness import running_server


@pytest.fixture
def make_store(tiny_chat_checkpoint, embedder, clean_redis):
    generator = AdapterGenerator.load(tiny_chat_checkpoint, embedder=embedder)

    def make() -> AdapterStore:
        return AdapterStore(generator, aioredis.Redis.from_url(clean_redis), L1Cache(16, 1 << 30))

    return make


async def stored_within(store: AdapterStore, adapter_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await store.redis.exists(KEY + adapter_id):
            return True
        await asyncio.sleep(0.02)
    return False


def test_a_held_write_waits_for_its_release(make_store):
    async def scenario() -> None:
        store = make_store()
        held = await store.get_or_create("Summarise news articles.", hold_write=True)
        assert not await stored_within(store, held.record.id, 0.5)
        held.release_write()
        assert await stored_within(store, held.record.id, 5.0)
        unheld = await store.get_or_create("Classify the sentiment of reviews.")  # POST /v1/adapters
        assert unheld.write_hold is None and await stored_within(store, unheld.record.id, 5.0)
        await store.redis.aclose()

    asyncio.run(scenario())


def test_a_held_write_is_written_when_never_released_or_when_flushed(make_store, monkeypatch):
    monkeypatch.setattr(store_module, "WRITE_HOLD_S", 0.3)

    async def scenario() -> None:
        store = make_store()
        forgotten = await store.get_or_create("Translate English into German.", hold_write=True)
        assert await stored_within(store, forgotten.record.id, 5.0)  # after WRITE_HOLD_S, unreleased
        monkeypatch.setattr(store_module, "WRITE_HOLD_S", 10.0)
        held = await store.get_or_create("Answer trivia questions.", hold_write=True)
        started = time.monotonic()
        await store.flush()  # shutting down: what is held goes now, not after WRITE_HOLD_S
        assert time.monotonic() - started < 5.0
        assert await store.redis.exists(KEY + held.record.id)
        await store.redis.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_stores_its_new_adapter_after_its_first_token(server_settings, stream):
    with running_server(server_settings()) as server:
        svc = server.service
        tokens_at_write: list[float] = []
        write = svc.store._write

        async def watched(record):
            tokens_at_write.append(svc.metrics.registry.get_sample_value("t2l_generated_tokens_total"))
            return await write(record)

        svc.store._write = watched
        body = {
            "model": svc.base_name,
            "task_description": f"Write haiku about the sea ({'streamed' if stream else 'whole'}).",
            "messages": [{"role": "user", "content": "Go."}],
            "max_tokens": 4,
            "stream": stream,
        }
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        if stream:
            lines = response.text.splitlines()
            adapter_id = json.loads(next(x for x in lines if x.startswith("data: {"))[6:])["adapter"]["id"]
        else:
            adapter_id = response.json()["adapter"]["id"]
        client = redis.Redis.from_url(svc.settings.redis_url)
        deadline = time.monotonic() + 3.0  # well before WRITE_HOLD_S: the first token released it
        while time.monotonic() < deadline and not client.exists(KEY + adapter_id):
            time.sleep(0.02)
        assert client.exists(KEY + adapter_id)
        assert len(tokens_at_write) == 1 and tokens_at_write[0] >= 1
