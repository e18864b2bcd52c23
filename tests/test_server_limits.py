"""Limits that protect the service: body size, request rate, API keys from a file, generation time."""

import httpx
import pytest
from pydantic import ValidationError

from server.limits import RateLimitMiddleware
from server.settings import ServerSettings
from tests.server_harness import running_server
from tests.test_server_errors import assert_error


def chat_body(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2} | fields


def test_a_body_over_the_cap_is_refused_declared_or_streamed(server_settings):
    with running_server(server_settings(max_body_bytes=4096)) as server:
        url = f"{server.url}/v1/adapters"
        big = b'{"description": "' + b"x" * 10_000 + b'"}'
        assert_error(httpx.post(url, content=big, timeout=30), 413, "invalid_request_error", None, "limit")

        def chunks():  # no Content-Length: the cap holds while reading
            yield big[:3000]
            yield big[3000:]

        streamed = httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=30)
        assert_error(streamed, 413, "invalid_request_error", None, "4096")
        small = httpx.post(url, json={"description": "Answer yes or no."}, timeout=30)
        assert small.status_code == 200


def test_the_rate_limit_answers_429_with_retry_after_per_key(server_settings):
    with running_server(server_settings(rate_limit=3, api_keys=["a", "b"])) as server:
        url = f"{server.url}/v1/models"
        for _ in range(3):
            assert httpx.get(url, headers={"Authorization": "Bearer a"}, timeout=30).status_code == 200
        refused = httpx.get(url, headers={"Authorization": "Bearer a"}, timeout=30)
        assert_error(refused, 429, "rate_limit_error", None, "rate limit")
        assert int(refused.headers["Retry-After"]) >= 1
        assert httpx.get(url, headers={"Authorization": "Bearer b"}, timeout=30).status_code == 200
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200  # not a /v1 route


def test_a_bucket_refills_with_time():
    now = [0.0]

    async def app(scope, receive, send):
        raise AssertionError("not called")

    limiter = RateLimitMiddleware(app, per_minute=60, clock=lambda: now[0])
    assert [limiter._take(b"k") for _ in range(60)] == [0.0] * 60
    assert limiter._take(b"k") == pytest.approx(1.0)
    now[0] = 2.5
    assert limiter._take(b"k") == 0.0 and limiter._take(b"k") == 0.0
    assert limiter._take(b"k") == pytest.approx(0.5)


def test_api_keys_from_a_file(server_settings, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nfile-key\n\n")
    with running_server(server_settings(api_keys=["env-key"], api_keys_file=keys)) as server:
        url = f"{server.url}/v1/models"
        for key in ("file-key", "env-key"):
            assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
        assert httpx.get(url, headers={"Authorization": "Bearer # team keys"}, timeout=30).status_code == 401
    with pytest.raises(ValidationError, match="T2L_API_KEYS_FILE"):
        ServerSettings(api_keys_file=tmp_path / "missing")


def test_a_generation_past_its_time_ends_as_if_at_max_tokens(server_settings):
    with running_server(server_settings(generation_timeout_s=1e-6, max_tokens_cap=64)) as server:
        body = chat_body(server.service.base_name, max_tokens=64, ignore_eos=True, temperature=0)
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 1  # the first token already came too late
