"""The HTTP API over real HTTP (uvicorn on loopback) with a real Redis server."""

import asyncio
import json
import time

import httpx
import pytest

from tests.conftest import settled_thread_count, thread_count
from tests.server_harness import running_server

MATH = "Answer grade-school math word problems, show the steps."
FRENCH = "Translate English sentences into French."


@pytest.fixture
def server(server_settings):
    with running_server(server_settings()) as running:
        yield running


def chat(server, content: str, **fields) -> httpx.Response:
    body = {
        "model": server.service.base_name,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
    } | fields
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def test_adapter_round_trip(server):
    url = f"{server.url}/v1/adapters"
    first = httpx.post(url, json={"description": MATH}).json()
    assert first["id"].startswith("t2l-") and first["object"] == "adapter" and first["cached"] is False
    assert first["timings_ms"]["embed"] > 0 and first["timings_ms"]["hypernet"] > 0
    assert first["rank"] == 4 and first["target_modules"] == ["q_proj", "v_proj"]
    assert first["checkpoint_status"] == "untrained" and first["base_model"] == server.service.base_name
    assert first["checkpoint_trained"] is False
    again = httpx.post(
        url, json={"description": "  Answer grade-school math word problems,   show the steps"}
    )
    assert again.json()["id"] == first["id"] and again.json()["cached"] == "l1"
    assert httpx.get(f"{url}/{first['id']}").json()["description"] == MATH

    ids = [first["id"]] + [
        httpx.post(url, json={"description": f"task number {i}"}).json()["id"] for i in range(3)
    ]
    page = httpx.get(url, params={"limit": 3}).json()
    assert [a["id"] for a in page["data"]] == ids[:3] and page["has_more"] is True
    rest = httpx.get(url, params={"limit": 3, "after": page["last_id"]}).json()
    assert [a["id"] for a in rest["data"]] == ids[3:] and rest["has_more"] is False

    assert httpx.delete(f"{url}/{first['id']}").json() == {
        "id": first["id"],
        "object": "adapter",
        "deleted": True,
    }
    assert httpx.get(f"{url}/{first['id']}").status_code == 404
    assert httpx.delete(f"{url}/{first['id']}").status_code == 404
    assert httpx.post(url, json={"description": MATH}).json()["cached"] is False  # regenerated after delete


def test_making_and_storing_adapters_leaves_no_thread_behind(server, clean_redis):
    """Generation and the write to Redis run on the store's one worker thread, where torch starts no
    OpenMP pool (a pool beside the engine's slows its every step: server.threads): once that thread
    exists, making and storing adapters adds no thread."""
    import redis

    client = redis.Redis.from_url(clean_redis)
    httpx.post(f"{server.url}/v1/adapters", json={"description": "the worker thread starts here"})
    before = settled_thread_count()
    ids = [
        httpx.post(f"{server.url}/v1/adapters", json={"description": f"task {i}"}).json()["id"]
        for i in range(3)
    ]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        thread_count() != before or not all(client.exists(f"t2l:adapter:{i}") for i in ids)
    ):
        time.sleep(0.02)
    assert all(client.exists(f"t2l:adapter:{i}") for i in ids)
    assert thread_count() == before


def test_chat_inline_description_then_by_adapter_id(server):
    inline = chat(server, "What is 2 + 3?", task_description=MATH).json()
    assert inline["object"] == "chat.completion" and inline["choices"][0]["finish_reason"] in (
        "stop",
        "length",
    )
    assert inline["adapter"]["cached"] is False and inline["usage"]["completion_tokens"] >= 1
    assert (
        inline["usage"]["total_tokens"]
        == inline["usage"]["prompt_tokens"] + inline["usage"]["completion_tokens"]
    )
    by_id = chat(server, "What is 2 + 3?", model=inline["adapter"]["id"]).json()
    assert by_id["adapter"] == {"id": inline["adapter"]["id"], "cached": "l1"}
    assert by_id["choices"][0]["message"]["content"] == inline["choices"][0]["message"]["content"]
    base = chat(server, "What is 2 + 3?").json()
    assert base["adapter"] is None
    assert base["choices"][0]["message"]["content"] != inline["choices"][0]["message"]["content"]


def test_streaming_sends_chunks_ending_with_done_and_the_same_text(server):
    plain = chat(server, "Name a colour.", task_description=FRENCH).json()
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        timeout=120,
        json={
            "model": server.service.base_name,
            "task_description": FRENCH,
            "stream": True,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Name a colour."}],
            "stream_options": {"include_usage": True},
        },
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[0]["adapter"]["cached"] == "l1"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]


def test_openai_client_chat_stream_and_models(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    base = server.service.base_name
    reply = client.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        temperature=0,
        extra_body={"task_description": MATH},
    )
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1
    adapter_id = reply.model_extra["adapter"]["id"]
    pieces = client.chat.completions.create(
        model=adapter_id,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert streamed == reply.choices[0].message.content
    models = {m.id: m for m in client.models.list().data}
    assert models[base].model_extra["parent"] is None
    assert models[base].model_extra["checkpoint_status"] == "untrained"
    assert models[base].model_extra["checkpoint_trained"] is False
    assert models[adapter_id].model_extra["parent"] == base


def test_concurrent_requests_for_one_new_description_generate_once(server):
    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            replies = await asyncio.gather(
                *[
                    client.post("/v1/adapters", json={"description": "Detect sarcasm in tweets."})
                    for _ in range(20)
                ]
            )
        return [r.json() for r in replies]

    before = server.service.store.generations
    replies = asyncio.run(burst())
    assert server.service.store.generations - before == 1
    assert len({r["id"] for r in replies}) == 1
    assert sorted(str(r["cached"]) for r in replies).count("False") == 1


def test_adapters_survive_a_restart_in_redis(server_settings):
    settings = server_settings()
    with running_server(settings) as first:
        created = httpx.post(f"{first.url}/v1/adapters", json={"description": MATH}).json()
    with running_server(settings) as second:
        again = httpx.post(f"{second.url}/v1/adapters", json={"description": MATH}).json()
        assert again["id"] == created["id"] and again["cached"] == "redis"
        assert second.service.store.generations == 0
        parts = again["timings_ms"]  # where a Redis hit's time goes: the read, then check and decode
        assert parts["embed"] is None and parts["hypernet"] is None
        assert parts["redis_read"] > 0 and parts["decode"] > 0
        assert parts["redis_read"] + parts["decode"] <= parts["total"]
        assert created["timings_ms"]["redis_read"] is None and created["timings_ms"]["embed"] > 0
        by_id = httpx.get(f"{second.url}/v1/adapters/{created['id']}")
        assert by_id.json()["cached"] == "l1"


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16"])
def test_two_adapters_in_one_batch_match_each_alone(server_settings, base_dtype):
    with running_server(server_settings(batch_window_ms=300.0, base_dtype=base_dtype)) as server:
        for description in (MATH, FRENCH):  # make both adapters first, so both requests arrive together
            httpx.post(f"{server.url}/v1/adapters", json={"description": description})

        async def together() -> list[dict]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                body = {
                    "model": server.service.base_name,
                    "max_tokens": 10,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "Tell me something."}],
                }
                replies = await asyncio.gather(
                    *[
                        client.post("/v1/chat/completions", json=body | {"task_description": d})
                        for d in (MATH, FRENCH)
                    ]
                )
            return [r.json()["choices"][0]["message"]["content"] for r in replies]

        batches = server.service.engine.batches
        pair = asyncio.run(together())
        assert server.service.engine.batches == batches + 1  # both rows decoded in one batch
        alone = [
            chat(server, "Tell me something.", task_description=d, max_tokens=10).json()["choices"][0][
                "message"
            ]["content"]
            for d in (MATH, FRENCH)
        ]
        assert pair == alone
        assert pair[0] != pair[1]


def test_a_client_that_disconnects_frees_its_slot(server_settings):
    with running_server(server_settings(max_tokens_cap=4000)) as server:
        body = {
            "model": server.service.base_name,
            "task_description": MATH,
            "stream": True,
            "max_tokens": 4000,
            "ignore_eos": True,  # a random tiny model may end its turn early: keep it long
            "temperature": 0,
            "messages": [{"role": "user", "content": "Go on."}],
        }
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()  # kept: a discarded iterator closes the stream, a disconnect
            first = next(lines)
            assert response.status_code == 200, first
            assert sum(server.service.bank.pins) == 1, first  # pinned while the request runs
        left = time.monotonic()
        while sum(server.service.bank.pins) and time.monotonic() - left < 10:
            time.sleep(0.01)
        # freed at once, long before 4000 tokens could have been generated (about 15 s here)
        assert sum(server.service.bank.pins) == 0 and time.monotonic() - left < 2
        reply = chat(server, "Still there?", task_description=MATH).json()  # the engine moved on
        assert reply["choices"][0]["finish_reason"] in ("stop", "length")


def test_sampling_seed_stop_strings_and_ttl(server_settings):
    import redis

    settings = server_settings(adapter_ttl_s=300)
    with running_server(settings) as server:
        greedy = chat(server, "Count.", task_description=MATH, max_tokens=12).json()["choices"][0]
        text = greedy["message"]["content"]
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        cut = chat(server, "Count.", task_description=MATH, max_tokens=12, stop=[stop]).json()["choices"][0]
        assert cut["message"]["content"] == text[: text.find(stop)] and cut["finish_reason"] == "stop"

        sampled = [
            chat(server, "Count.", task_description=MATH, max_tokens=12, temperature=1.0, seed=seed).json()
            for seed in (7, 7, 8)
        ]
        contents = [s["choices"][0]["message"]["content"] for s in sampled]
        assert contents[0] == contents[1] != contents[2]

        adapter_id = sampled[0]["adapter"]["id"]
        client = redis.Redis.from_url(settings.redis_url)
        deadline = time.monotonic() + 10
        while not client.exists(f"t2l:adapter:{adapter_id}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0 < client.ttl(f"t2l:adapter:{adapter_id}") <= 300


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16"])
def test_a_request_joins_a_running_batch_and_gets_the_tokens_it_gets_alone(server_settings, base_dtype):
    with running_server(server_settings(max_tokens_cap=3000, base_dtype=base_dtype)) as server:
        base = server.service.base_name
        long_body = {
            "model": base,
            "task_description": MATH,
            "max_tokens": 3000,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Go on and on."}],
        }
        short_body = {
            "model": base,
            "task_description": FRENCH,
            "max_tokens": 12,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Say something."}],
        }
        httpx.post(f"{server.url}/v1/adapters", json={"description": FRENCH})

        async def busy() -> tuple[str, bool]:
            async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
                long_run = asyncio.create_task(client.post("/v1/chat/completions", json=long_body))
                while server.service.engine.batches == prefills:  # the long one is prefilled, decoding
                    await asyncio.sleep(0.01)
                short = await client.post("/v1/chat/completions", json=short_body)
                joined_mid_flight = not long_run.done()
                await long_run
            return short.json()["choices"][0]["message"]["content"], joined_mid_flight

        prefills = server.service.engine.batches
        in_busy_batch, joined = asyncio.run(busy())
        assert joined and server.service.engine.batches == prefills + 2
        alone = httpx.post(f"{server.url}/v1/chat/completions", json=short_body, timeout=120).json()
        assert in_busy_batch == alone["choices"][0]["message"]["content"]
