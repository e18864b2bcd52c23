"""Errors and failure modes of the HTTP API, over real HTTP (uvicorn on loopback) with a real Redis.

Every error must be an OpenAI error object ``{"error": {"message", "type", "param", "code"}}`` with the
right status and a message that names the problem, never a traceback. Also covered: API keys, a full
queue (429 with Retry-After), a Redis outage (serve from L1 and generation, report degraded, write the
missed adapters once Redis is back) and corrupt Redis entries (discarded and regenerated, never trusted).
"""

import asyncio
import dataclasses
import time

import httpx
import pytest
import redis

from hypernet.adapter import LoraAdapter
from server.redis_server import EmbeddedRedis
from server.store import INDEX, KEY, checksum
from tests.server_harness import free_port, running_server

MATH = "Answer grade-school math word problems, show the steps."
FRENCH = "Translate English sentences into French."
MISSING = "t2l-00000000000000000000000000000000"


def assert_error(response: httpx.Response, status: int, type_: str, param: str | None, *words: str) -> dict:
    """Check an OpenAI error response and return its error object; ``words`` must be in the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == type_ and error["param"] == param, error
    assert isinstance(error["message"], str) and error["message"], error
    for word in words:
        assert word.lower() in error["message"].lower(), (word, error)
    return error


@pytest.fixture
def server(server_settings):
    settings = server_settings(max_description_chars=100, max_tokens_cap=16, max_prompt_tokens=64)
    with running_server(settings) as running:
        yield running


def chat(server, **fields) -> httpx.Response:
    body = {
        "model": server.service.base_name,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "temperature": 0,
    } | fields
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)


def create(url: str, description: str) -> dict:
    response = httpx.post(f"{url}/v1/adapters", json={"description": description}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# ---- request validation


def test_adapter_create_rejects_bad_descriptions(server):
    url = f"{server.url}/v1/adapters"
    invalid = "invalid_request_error"
    for description in ("", "   \n\t  "):
        response = httpx.post(url, json={"description": description})
        assert assert_error(response, 422, invalid, "description", "description", "empty")["code"] == "empty"
    response = httpx.post(url, json={"description": "x" * 101})
    assert assert_error(response, 413, invalid, "description", "101", "100")["code"] == "too_long"
    assert httpx.post(url, json={"description": "x" * 100}, timeout=60).status_code == 200  # at the limit

    assert_error(httpx.post(url, json={}), 422, invalid, "description", "description", "required")
    assert_error(httpx.post(url, json={"description": 7}), 422, invalid, "description", "string")
    assert_error(httpx.post(url, json=["a task"]), 422, invalid, None, "object")
    not_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(not_json, 422, invalid, not_json.json()["error"]["param"], "JSON")  # param: see below
    assert server.service.store.generations == 1  # only the valid request generated anything


def test_a_body_that_is_not_json_has_no_bogus_param(server):
    response = httpx.post(
        f"{server.url}/v1/adapters", content=b"{not json", headers={"content-type": "application/json"}
    )
    error = assert_error(response, 422, "invalid_request_error", None, "JSON")
    assert not error["message"].split(":")[0].isdigit(), error


def test_chat_rejects_bad_requests(server):
    invalid = "invalid_request_error"
    assert chat(server, max_tokens=16).status_code == 200  # the cap itself is allowed
    error = assert_error(chat(server, max_tokens=17), 422, invalid, "max_tokens", "17", "16")
    assert error["code"] == "too_large"
    streamed = chat(server, max_tokens=17, stream=True)  # refused before any event is sent
    assert_error(streamed, 422, invalid, "max_tokens", "17", "16")
    long_prompt = [{"role": "user", "content": "word " * 200}]
    error = assert_error(chat(server, messages=long_prompt), 400, invalid, "messages", "64")
    assert error["code"] == "context_length_exceeded"
    error = assert_error(
        chat(server, model="no-such-model"), 404, "not_found_error", "model", "no-such-model"
    )
    assert error["code"] == "model_not_found"
    for empty in ("", "  \n "):
        assert_error(chat(server, task_description=empty), 422, invalid, "task_description", "empty")
    assert_error(chat(server, task_description="x" * 101), 413, invalid, "task_description", "100")
    assert_error(chat(server, messages=[]), 422, invalid, "messages", "messages", "1")
    assert_error(chat(server, n=2), 422, invalid, "n", "1")
    assert_error(chat(server, max_tokens=0), 422, invalid, "max_tokens", "max_tokens")
    robot = [{"role": "robot", "content": "Hi"}]
    assert_error(chat(server, messages=robot), 422, invalid, "messages.0.role", "role")

    adapter_id = create(server.url, MATH)["id"]
    both = chat(server, model=adapter_id, task_description=FRENCH)
    assert assert_error(both, 422, invalid, "model", "task_description", "base model")["code"] == "conflict"
    assert server.service.store.generations == 1  # the conflicting request generated nothing


def test_max_completion_tokens_over_the_cap_names_that_field(server):
    response = chat(server, max_tokens=None, max_completion_tokens=17)
    assert_error(response, 422, "invalid_request_error", "max_completion_tokens", "17", "16")


def test_unknown_adapter_ids_are_404(server):
    url = f"{server.url}/v1/adapters/{MISSING}"
    for response in (httpx.get(url), httpx.delete(url), httpx.get(f"{url}/download")):
        error = assert_error(response, 404, "not_found_error", "id", MISSING)
        assert error["code"] == "adapter_not_found"
    assert_error(chat(server, model=MISSING), 404, "not_found_error", "model", MISSING)


def test_download_rejects_an_unknown_format(server):
    adapter_id = create(server.url, MATH)["id"]
    url = f"{server.url}/v1/adapters/{adapter_id}/download"
    assert httpx.get(url, params={"format": "tar.gz"}).status_code == 200
    response = httpx.get(url, params={"format": "rar"})
    assert_error(response, 422, "invalid_request_error", "format", "format", "zip", "tar.gz")
    response = httpx.get(f"{server.url}/v1/adapters", params={"limit": 0})
    assert_error(response, 422, "invalid_request_error", "limit", "limit")


# ---- API keys

BAD_AUTH = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer"},
    {"Authorization": "secret-2"},
    {"Authorization": "Basic secret-2"},
    {"Authorization": "Bearer secret-2x"},
]
GUARDED = [  # every /v1 route, some with bodies that would not validate: the key is checked first
    ("GET", "/v1/models", None),
    ("POST", "/v1/adapters", {"description": MATH}),
    ("POST", "/v1/adapters", {}),
    ("GET", "/v1/adapters", None),
    ("GET", f"/v1/adapters/{MISSING}", None),
    ("DELETE", f"/v1/adapters/{MISSING}", None),
    ("GET", f"/v1/adapters/{MISSING}/download", None),
    ("POST", "/v1/chat/completions", {"model": "x", "messages": []}),
]


def test_api_keys_guard_every_v1_route_but_not_health(server_settings):
    with running_server(server_settings(api_keys=["secret-1", "secret-2"])) as server:
        models = f"{server.url}/v1/models"
        for headers in BAD_AUTH:
            error = assert_error(
                httpx.get(models, headers=headers), 401, "authentication_error", None, "API key"
            )
            assert error["code"] == "invalid_api_key"
            assert "secret" not in error["message"]
        for key in ("secret-1", "secret-2"):
            assert httpx.get(models, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for method, path, body in GUARDED:
            response = httpx.request(
                method, server.url + path, json=body, headers={"Authorization": "Bearer no"}
            )
            assert_error(response, 401, "authentication_error", None, "API key")
        assert server.service.store.generations == 0
        for path in ("/healthz", "/readyz"):
            assert httpx.get(server.url + path).status_code == 200


def test_api_key_is_checked_before_the_body_is_parsed(server_settings):
    with running_server(server_settings(api_keys=["secret-1"])) as server:
        response = httpx.post(
            f"{server.url}/v1/adapters", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_error(response, 401, "authentication_error", None, "API key")
        assert response.headers["www-authenticate"].lower().startswith("bearer")


# ---- back-pressure


def test_a_full_queue_answers_429_with_retry_after(server_settings):
    settings = server_settings(max_queue=1, max_batch=1, batch_window_ms=0, max_tokens_cap=200)
    with running_server(settings) as server:
        body = {
            "model": server.service.base_name,
            "max_tokens": 200,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
        }

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                return await asyncio.gather(
                    *[client.post("/v1/chat/completions", json=body) for _ in range(6)]
                )

        replies = asyncio.run(burst())
        busy = [r for r in replies if r.status_code == 429]
        done = [r for r in replies if r.status_code != 429]
        assert busy and done, [r.status_code for r in replies]
        for response in busy:
            error = assert_error(response, 429, "rate_limit_error", None, "busy")
            assert error["code"] == "queue_full"
            assert int(response.headers["retry-after"]) >= 1
        for response in done:
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] >= 1
        assert chat(server).status_code == 200  # the server recovers once the queue drains


# ---- Redis outage


def wait_for_key(client: redis.Redis, key: str, timeout_s: float = 3.0, poke: str | None = None) -> None:
    """Wait until ``key`` exists (adapters are written to Redis behind the response); ``poke``: a
    server whose /readyz to call meanwhile, since each of its pings retries the writes it missed."""
    deadline = time.monotonic() + timeout_s
    while not client.exists(key):
        assert time.monotonic() < deadline, f"{key} never reached Redis"
        if poke is not None:
            readyz(poke)
        time.sleep(0.05)


def readyz(url: str) -> dict:
    response = httpx.get(f"{url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_redis_outage_degrades_then_writes_resume(server_settings, tmp_path):
    own = EmbeddedRedis(tmp_path / "r", port=free_port())
    url = own.start()
    try:
        with running_server(server_settings(redis_url=url)) as server:
            before = create(server.url, MATH)
            assert before["cached"] is False
            wait_for_key(redis.Redis.from_url(url), KEY + before["id"])
            assert readyz(server.url)["status"] == "ready"

            own.stop()
            during = create(server.url, FRENCH)
            assert during["cached"] is False
            assert create(server.url, FRENCH)["cached"] == "l1"
            assert create(server.url, MATH)["cached"] == "l1"
            assert httpx.get(f"{server.url}/v1/adapters/{before['id']}").json()["cached"] == "l1"
            assert chat(server, model=during["id"]).status_code == 200
            listed = httpx.get(f"{server.url}/v1/adapters").json()
            assert {before["id"], during["id"]} <= {a["id"] for a in listed["data"]}
            state = readyz(server.url)
            assert state["status"] == "degraded" and state["redis"] == "unreachable"

            own.start()  # same port, same data directory
            deadline = time.monotonic() + 10
            while readyz(server.url)["status"] != "ready":
                assert time.monotonic() < deadline, "the server never noticed that Redis came back"
                time.sleep(0.2)
            direct = redis.Redis.from_url(url)
            wait_for_key(direct, KEY + during["id"])  # /readyz may answer while the watcher still writes
            stored = direct.hgetall(KEY + during["id"])
            assert stored[b"checksum"].decode() == checksum(stored[b"data"])
            assert stored[b"description"].decode() == FRENCH
            assert direct.zscore(INDEX, during["id"]) is not None
            assert direct.exists(KEY + before["id"]) and direct.zscore(INDEX, before["id"]) is not None
            assert server.service.store.generations == 2

        with running_server(server_settings(redis_url=url)) as fresh:  # a new L1: both come from Redis
            assert create(fresh.url, MATH)["cached"] == "redis"
            assert create(fresh.url, FRENCH)["cached"] == "redis"
            assert fresh.service.store.generations == 0
    finally:
        own.stop()


def test_a_write_that_fails_again_on_retry_is_retried_later(server_settings, tmp_path):
    own = EmbeddedRedis(tmp_path / "r", port=free_port())
    url = own.start()
    try:
        direct = redis.Redis.from_url(url)
        with running_server(server_settings(redis_url=url)) as server:
            direct.config_set("maxmemory", 1)  # Redis answers PING and reads but refuses writes (OOM)
            made = create(server.url, FRENCH)
            assert made["cached"] is False and not direct.exists(KEY + made["id"])
            for _ in range(3):  # each /readyz pings, which retries the write, which fails again
                readyz(server.url)
                time.sleep(0.05)
            assert not direct.exists(KEY + made["id"])
            direct.config_set("maxmemory", 0)  # writes are accepted again
            wait_for_key(direct, KEY + made["id"], poke=server.url)
    finally:
        own.stop()


# ---- corrupt Redis entries


def corrupt_checksum(fields: dict) -> dict:
    return {"checksum": "0" * 64}


def corrupt_fingerprint(fields: dict) -> dict:
    return {"base_fingerprint": "another-base"}


def corrupt_shapes(fields: dict) -> dict:
    """Tensors of the wrong shape, with a checksum that matches them."""
    adapter = LoraAdapter.from_bytes(fields[b"data"])
    narrow = dataclasses.replace(adapter, A={m: a[:, :1] for m, a in adapter.A.items()})
    data = narrow.to_bytes()
    return {"data": data, "checksum": checksum(data)}


def truncate_payload(fields: dict) -> dict:
    """A safetensors header intact but its tensor bytes cut short, with a checksum that matches."""
    data = fields[b"data"][:-64]
    return {"data": data, "checksum": checksum(data)}


@pytest.mark.parametrize("corrupt", [corrupt_checksum, corrupt_fingerprint, corrupt_shapes, truncate_payload])
def test_a_corrupt_redis_entry_is_discarded_and_regenerated(server_settings, corrupt):
    settings = server_settings()
    with running_server(settings) as first:
        adapter_id = create(first.url, MATH)["id"]
    direct = redis.Redis.from_url(settings.redis_url)  # the first server flushed its writes as it stopped
    direct.hset(KEY + adapter_id, mapping=corrupt(direct.hgetall(KEY + adapter_id)))
    with running_server(settings) as second:  # a new server, so L1 is empty and Redis is asked
        again = httpx.post(f"{second.url}/v1/adapters", json={"description": MATH}, timeout=60)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == adapter_id and again.json()["cached"] is False
        assert second.service.store.generations == 1
        counted = second.service.metrics.registry.get_sample_value("t2l_redis_corrupt_entries_total")
        assert counted == 1  # for /metrics
        fingerprint = second.service.store.fingerprint
    stored = direct.hgetall(KEY + adapter_id)
    assert stored[b"checksum"].decode() == checksum(stored[b"data"])
    assert stored[b"base_fingerprint"].decode() == fingerprint
    LoraAdapter.from_bytes(stored[b"data"]).check_shapes()


def test_the_embedded_redis_is_restarted_when_it_dies(server_settings, tmp_path):
    """SIGKILL the service's own redis-server: it comes back on its append-only file, /readyz returns to
    ready, what was stored before is still there and what was made meanwhile is written."""
    import os
    import signal

    with running_server(server_settings(redis_url=None, state_dir=tmp_path / "s")) as server:
        embedded = server.service.embedded
        assert embedded is not None
        before = create(server.url, MATH)
        direct = redis.Redis(unix_socket_path=str(embedded.socket))
        wait_for_key(direct, KEY + before["id"])
        first = embedded.process.pid
        os.kill(first, signal.SIGKILL)
        during = create(server.url, FRENCH)  # served while Redis is down or coming back
        assert during["cached"] is False
        deadline = time.monotonic() + 20
        while embedded.process.pid == first or readyz(server.url)["status"] != "ready":
            assert time.monotonic() < deadline, "the embedded Redis was not restarted"
            time.sleep(0.2)
        direct = redis.Redis(unix_socket_path=str(embedded.socket))
        wait_for_key(direct, KEY + during["id"], poke=server.url)
        assert direct.exists(KEY + before["id"])  # from the append-only file
        assert server.service.metrics.registry.get_sample_value("t2l_redis_restarts_total") == 1
        assert direct.zscore(INDEX, during["id"]) is not None
