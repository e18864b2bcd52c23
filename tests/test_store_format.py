"""How adapters sit in Redis: fp16 safetensors bytes with an XXH3-128 checksum, read back as views
(no copy); entries written before (fp32, SHA-256) are still served; downloads convert to the dtype asked."""

import hashlib
import io
import zipfile

import httpx
import redis
import torch
from safetensors.torch import load as load_bytes

from hypernet.adapter import LoraAdapter, tensor_views
from server.store import KEY, checksum
from tests.server_harness import running_server

MATH = "Answer grade-school math word problems."


def chat(url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "2 + 3 = ?"}], "max_tokens": 12}
    response = httpx.post(f"{url}/v1/chat/completions", json={**body, "temperature": 0}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_redis_holds_fp16_with_a_fast_checksum_and_every_tier_answers_alike(server_settings):
    settings = server_settings()
    with running_server(settings) as first:
        made = httpx.post(f"{first.url}/v1/adapters", json={"description": MATH}, timeout=60).json()
        fresh = chat(first.url, made["id"])  # from L1, as generated
        generated = first.service.store.l1.get(made["id"]).adapter
    stored = redis.Redis.from_url(settings.redis_url).hgetall(KEY + made["id"])
    data = stored[b"data"]
    assert stored[b"checksum"].decode() == checksum(data) and checksum(data).startswith("xxh3_128:")
    assert {t.dtype for t in load_bytes(data).values()} == {torch.float16}
    fp32_bytes = sum(t.numel() * 4 for t in load_bytes(data).values())
    header = 8 + int.from_bytes(data[:8], "little")
    assert len(data) - header == fp32_bytes // 2  # the tensors take half the bytes of fp32
    views = tensor_views(data)
    assert all(torch.equal(views[k], v) for k, v in load_bytes(data).items())
    back = LoraAdapter.from_bytes(data)
    assert all(torch.equal(back.A[m], generated.A[m]) for m in back.A)  # L1 keeps what Redis keeps
    with running_server(settings) as second:  # an empty L1: the adapter comes from Redis
        assert chat(second.url, made["id"]) == fresh
        assert second.service.store.generations == 0


def test_an_entry_written_before_fp16_and_xxh3_is_still_served(server_settings):
    settings = server_settings()
    with running_server(settings) as first:
        adapter_id = httpx.post(f"{first.url}/v1/adapters", json={"description": MATH}, timeout=60).json()[
            "id"
        ]
    direct = redis.Redis.from_url(settings.redis_url)
    old = LoraAdapter.from_bytes(direct.hget(KEY + adapter_id, "data")).to(torch.float32).to_bytes()
    direct.hset(KEY + adapter_id, mapping={"data": old, "checksum": hashlib.sha256(old).hexdigest()})
    with running_server(settings) as second:
        again = httpx.post(f"{second.url}/v1/adapters", json={"description": MATH}, timeout=60).json()
        assert again["cached"] == "redis" and second.service.store.generations == 0


def test_downloads_are_fp32_unless_another_dtype_is_asked(server_settings):
    with running_server(server_settings()) as server:
        adapter_id = httpx.post(f"{server.url}/v1/adapters", json={"description": MATH}, timeout=60).json()[
            "id"
        ]
        for asked, dtype in ((None, torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
            params = {"dtype": asked} if asked else {}
            archive = httpx.get(f"{server.url}/v1/adapters/{adapter_id}/download", params=params, timeout=60)
            assert archive.status_code == 200
            member = f"{adapter_id}/adapter_model.safetensors"
            tensors = load_bytes(zipfile.ZipFile(io.BytesIO(archive.content)).read(member))
            assert {t.dtype for t in tensors.values()} == {dtype}
        bad = httpx.get(
            f"{server.url}/v1/adapters/{adapter_id}/download", params={"dtype": "int8"}, timeout=60
        )
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "dtype"
