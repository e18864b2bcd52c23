"""Two ``t2l serve`` processes on loopback sharing one Redis: the first step of scaling out."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from server.store import INDEX, KEY, checksum
from tests.server_harness import free_port

pytestmark = pytest.mark.integration


def start(tiny_chat_base, tiny_chat_checkpoint, redis_url: str, tmp_path, name: str):
    port = free_port()
    env = os.environ | {
        "T2L_BASE_MODEL": str(tiny_chat_base),
        "T2L_CHECKPOINT": str(tiny_chat_checkpoint),
        "T2L_REDIS_URL": redis_url,
        "T2L_STATE_DIR": str(tmp_path / name),
        "T2L_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the replica did not become ready"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).json().get("status") == "ready":
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def generated(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "t2l_adapter_lookups_total" and s.labels == {"tier": "generated"}
    )


@pytest.fixture
def replicas(tiny_chat_base, tiny_chat_checkpoint, clean_redis, tmp_path):
    started = [start(tiny_chat_base, tiny_chat_checkpoint, clean_redis, tmp_path, n) for n in ("a", "b")]
    yield [url for _, url in started]
    for process, _ in started:
        process.terminate()
        process.wait(timeout=30)


def test_one_redis_serves_both_and_a_delete_reaches_the_other(replicas, clean_redis):
    a, b = replicas
    made = httpx.post(f"{a}/v1/adapters", json={"description": "Reverse the word."}, timeout=60).json()
    assert made["cached"] is False
    direct = redis.Redis.from_url(clean_redis)
    deadline = time.monotonic() + 5
    while not direct.exists(KEY + made["id"]):  # written behind the response
        assert time.monotonic() < deadline
        time.sleep(0.05)
    on_b = httpx.post(f"{b}/v1/adapters", json={"description": "Reverse the word."}, timeout=60).json()
    assert on_b["id"] == made["id"] and on_b["cached"] == "redis" and generated(b) == 0
    assert httpx.get(f"{b}/v1/adapters/{made['id']}", timeout=10).json()["cached"] == "l1"

    assert httpx.delete(f"{a}/v1/adapters/{made['id']}", timeout=10).status_code == 200
    deadline = time.monotonic() + 2  # the bound: pub/sub reaches B's L1 well within it
    while httpx.get(f"{b}/v1/adapters/{made['id']}", timeout=10).status_code != 404:
        assert time.monotonic() < deadline, "replica B still serves a deleted adapter"
        time.sleep(0.05)
    chat = httpx.post(
        f"{b}/v1/chat/completions",
        json={"model": made["id"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert chat.status_code == 404


def test_concurrent_first_requests_on_both_generate_at_most_twice(replicas, clean_redis):
    description = "Answer with the opposite of the given adjective."
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda url: httpx.post(f"{url}/v1/adapters", json={"description": description}, timeout=60),
                replicas * 4,
            )
        )
    assert all(r.status_code == 200 for r in replies)
    ids = {r.json()["id"] for r in replies}
    assert len(ids) == 1 and sum(generated(url) for url in replicas) <= 2
    direct = redis.Redis.from_url(clean_redis)
    (adapter_id,) = ids
    deadline = time.monotonic() + 5
    while not direct.exists(KEY + adapter_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stored = direct.hgetall(KEY + adapter_id)
    assert stored[b"checksum"].decode() == checksum(stored[b"data"])
    assert direct.zcard(INDEX) == 1
