"""Fuzzing the served OpenAPI schema with schemathesis, plus hand-written hostile requests.

Every generated request (valid and invalid by the schema) must get an answer below 500, and every error
an OpenAI error object. ``T2L_FUZZ_EXAMPLES`` sets the examples per operation (CI keeps it small).
"""

import json
import os
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.server_harness import running_server

EXAMPLES = int(os.environ.get("T2L_FUZZ_EXAMPLES", "25"))


def assert_openai_error(response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body


@pytest.fixture
def fuzzed(server_settings):
    settings = server_settings(max_tokens_cap=8, default_max_tokens=4, max_description_chars=200)
    with running_server(settings) as server:
        yield server.url


def test_generated_requests_never_get_a_server_error(fuzzed):
    schema = schemathesis.openapi.from_url(f"{fuzzed}/openapi.json")
    calls = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def check(case) -> None:
                response = case.call(base_url=fuzzed, timeout=60)
                calls.append(response.status_code)
                assert response.status_code < 500, (case.method, case.path, response.text[:500])
                if response.status_code >= 400 and case.path != "/openapi.json":
                    assert_openai_error(response)

            try:
                check()
            except Unsatisfiable:
                # nothing to violate: no inputs, or inputs that accept any value (a free string id)
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert len(calls) >= EXAMPLES  # the fuzzer really called the server
    if os.environ.get("T2L_FUZZ_REPORT"):  # the benchmark run records how many requests it sent
        Path(os.environ["T2L_FUZZ_REPORT"]).write_text(
            json.dumps({"requests": len(calls), "statuses": sorted(set(calls))})
        )


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"description": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}),  # deeply nested JSON
        (b'{"description": "caf\xc3\x28 \xff\xfe"}', {}),  # invalid UTF-8
        (b'{"description": "a\\u0000b"}', {}),  # a NUL byte
        (b'{"description": "x", "unknown": {"deep": [1, 2, 3]}}', {}),  # unknown fields
        (b"description=x", {"content-type": "application/x-www-form-urlencoded"}),  # wrong content type
        (b"\x00\x01\x02", {"content-type": "application/octet-stream"}),
        (b"{" * 10, {}),  # truncated JSON
    ],
)
def test_hostile_adapter_bodies_get_client_errors(fuzzed, content, headers):
    response = httpx.post(
        f"{fuzzed}/v1/adapters",
        content=content,
        headers={"content-type": "application/json"} | headers,
        timeout=60,
    )
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert_openai_error(response)


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 10**9},
        {"max_tokens": 10**12},
        {"max_tokens": -1},
        {"logit_bias": {str(i): 100 for i in range(5000)}},
        {"temperature": float("1e308")},
        {"messages": [{"role": "user", "content": "x" * 500_000}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}] * 1000}]},
        {"stop": ["a"] * 1000},
    ],
)
def test_hostile_chat_fields_get_client_errors(fuzzed, fields):
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | fields
    response = httpx.post(f"{fuzzed}/v1/chat/completions", json=body, timeout=60)
    assert 400 <= response.status_code < 500, response.text[:300]
    assert_openai_error(response)


@pytest.mark.parametrize(
    "adapter_id", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "t2l-" + "0" * 5000, "%00"]
)
def test_path_traversal_in_ids_is_a_plain_not_found(fuzzed, adapter_id):
    for path in (f"/v1/adapters/{adapter_id}", f"/v1/adapters/{adapter_id}/download?format=zip"):
        response = httpx.get(f"{fuzzed}{path}", timeout=30)
        assert response.status_code in (404, 422), response.text[:300]
        assert_openai_error(response)


def test_a_10_mb_body_is_refused_before_it_is_parsed(fuzzed):
    body = b'{"description": "' + b"x" * (10 * 2**20) + b'"}'
    response = httpx.post(f"{fuzzed}/v1/adapters", content=body, timeout=60)
    assert response.status_code == 413, response.text[:300]
    assert_openai_error(response)
