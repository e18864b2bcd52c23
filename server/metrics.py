"""Prometheus metrics of one service: HTTP, adapter tiers and generation, Redis, engine, slots.

Each service owns a registry of its own (two apps in one process, as in the tests, never share counts).
Gauges of live state (Redis up, write backlog, queue depth, running sequences) are read at scrape time.
Names and units follow the Prometheus conventions: ``t2l_*_seconds``, counters end in ``_total``.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)  # adapter work, tokens
SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # requests, first tokens


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "t2l_http_requests", "HTTP requests by route, method and status", ["route", "method", "status"],
            registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "t2l_http_request_duration_seconds", "HTTP request time to the end of the response (streams too)",
            ["route", "method"], buckets=SLOW, registry=r,
        )  # fmt: skip
        self.lookups = Counter("t2l_adapter_lookups", "Adapter lookups by the tier that answered", ["tier"],
                               registry=r)  # fmt: skip
        self.generation_seconds = Histogram(
            "t2l_adapter_generation_seconds", "Time to make a new adapter, by stage (embed, hypernet)",
            ["stage"], buckets=FAST, registry=r,
        )  # fmt: skip
        self.corrupt_entries = Counter(
            "t2l_redis_corrupt_entries", "Redis entries discarded as corrupt or foreign, then regenerated",
            registry=r,
        )  # fmt: skip
        self.redis_up = Gauge(
            "t2l_redis_up", "1 when Redis answers, 0 while the store is degraded", registry=r
        )
        self.redis_backlog = Gauge(
            "t2l_redis_write_backlog", "Adapters made while Redis was down, not yet written", registry=r
        )
        self.redis_restarts = Counter(
            "t2l_redis_restarts", "Restarts of the embedded Redis after it exited", registry=r
        )
        self.queue_depth = Gauge("t2l_engine_queue_depth", "Requests waiting for the engine", registry=r)
        self.running = Gauge(
            "t2l_engine_running_sequences", "Sequences decoding or having a long prompt prefilled", registry=r
        )
        self.tokens = Counter("t2l_generated_tokens", "Tokens sampled by the engine", registry=r)
        self.mid_step_prefills = Counter(
            "t2l_engine_mid_step_prefills",
            "Newcomers' prefills run between two layers of a decode step",
            registry=r,
        )
        self.prefill_chunks = Counter(
            "t2l_engine_prefill_chunks",
            "Chunks of long prompts prefilled between decode steps (T2L_PREFILL_CHUNK_TOKENS)",
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "t2l_time_to_first_token_seconds", "From engine submission to the first sampled token",
            buckets=SLOW, registry=r,
        )  # fmt: skip
        self.token_seconds = Histogram(
            "t2l_time_per_output_token_seconds", "Time between a sequence's consecutive tokens",
            buckets=FAST, registry=r,
        )  # fmt: skip
        self.vllm_loads = Counter(
            "t2l_vllm_adapter_loads", "Adapters registered with a vLLM server (T2L_ENGINE=vllm)", registry=r
        )
        self.vllm_load_seconds = Histogram(
            "t2l_vllm_adapter_load_seconds", "Time of vLLM's /v1/load_lora_adapter", buckets=SLOW,
            registry=r,
        )  # fmt: skip
        self.slot_activations = Counter("t2l_slot_activations", "Adapters copied into a slot", registry=r)
        self.slot_evictions = Counter(
            "t2l_slot_evictions", "Resident adapters overwritten to make room for another", registry=r
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (ids in paths do not explode labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.http_requests.labels(route, method, str(status)).inc()
            self.metrics.http_seconds.labels(route, method).observe(time.perf_counter() - start)
