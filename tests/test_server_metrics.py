"""GET /metrics: Prometheus text that the client's own parser reads, counters that move with requests."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server_harness import running_server


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_requests(server_settings):
    with running_server(server_settings()) as server:
        before = scrape(server.url)
        assert value(before, "t2l_redis_up") == 1 and value(before, "t2l_engine_queue_depth") == 0
        description = "Answer with the capital city of the country."
        for _ in range(2):
            made = httpx.post(f"{server.url}/v1/adapters", json={"description": description}, timeout=60)
            assert made.status_code == 200
        reply = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "model": made.json()["id"],
                "messages": [{"role": "user", "content": "France"}],
                "max_tokens": 5,
                "temperature": 0,
            },
            timeout=60,
        ).json()
        missing = httpx.get(f"{server.url}/v1/adapters/t2l-00000000000000000000000000000000", timeout=10)
        assert missing.status_code == 404
        after = scrape(server.url)

    assert value(after, "t2l_adapter_lookups_total", tier="generated") == 1
    assert value(after, "t2l_adapter_lookups_total", tier="l1") >= 2  # the repeat, then the chat's lookup
    assert value(after, "t2l_adapter_generation_seconds_count", stage="embed") == 1
    assert value(after, "t2l_adapter_generation_seconds_count", stage="hypernet") == 1
    tokens = reply["usage"]["completion_tokens"]
    assert value(after, "t2l_generated_tokens_total") >= tokens >= 1
    assert value(after, "t2l_time_to_first_token_seconds_count") == 1
    assert (
        value(after, "t2l_time_per_output_token_seconds_count")
        == value(after, "t2l_generated_tokens_total") - 1
    )
    assert value(after, "t2l_slot_activations_total") == 1
    route = "/v1/adapters"
    assert value(after, "t2l_http_requests_total", route=route, method="POST", status="200") == 2
    assert (
        value(after, "t2l_http_requests_total", route="/v1/adapters/{adapter_id}", method="GET", status="404")
        == 1
    )
    assert value(after, "t2l_http_request_duration_seconds_count", route=route, method="POST") == 2


def test_metrics_need_a_key_when_keys_are_set_unless_public(server_settings):
    with running_server(server_settings(api_keys=["sesame"])) as server:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
        scrape(server.url, Authorization="Bearer sesame")
    with running_server(server_settings(api_keys=["sesame"], metrics_public=True)) as server:
        scrape(server.url)
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401


def test_prompts_longer_than_a_chunk_are_prefilled_in_chunks_with_the_same_reply(server_settings):
    """``T2L_PREFILL_CHUNK_TOKENS`` reaches the engine: with chunks of 4 tokens the chat's prompt goes in
    as several (counted in ``t2l_engine_prefill_chunks_total``) and the greedy reply is the one a whole
    prefill gives."""
    chat = {
        "task_description": "Answer with the capital city of the country.",
        "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    replies, chunks = [], []
    for chunk in (4, 100_000):
        with running_server(server_settings(prefill_chunk_tokens=chunk)) as server:
            body = chat | {"model": server.service.base_name}
            reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            replies.append(reply.json()["choices"][0]["message"]["content"])
            chunks.append(value(scrape(server.url), "t2l_engine_prefill_chunks_total"))
    assert chunks[0] >= 3 and chunks[1] == 0
    assert replies[0] == replies[1]
