"""Load and fault campaign: the server under many concurrent clients, a Redis kill, SIGTERM, corruption.

The server is ``t2l serve`` in a process of its own (``bench.server.Server``) with its embedded Redis on a
fresh state directory; this process is the client (asyncio + httpx), on loopback only, every loop
bounded in count and time. Four phases, each a section of the JSON result:

* ``load``: ``--clients`` concurrent clients send ``--requests`` requests, mixed: POST /v1/adapters
  (``--descriptions`` distinct descriptions with repeats), chat with an inline description (plain and
  streamed, short ``max_tokens``), chat by adapter id, /v1/models and adapter downloads. Reports requests/s,
  p50/p99 per kind, statuses, errors by type, 5xx count and the server's RSS before and after.
* ``redis_kill``: the same mix (a third as many requests) while the embedded ``redis-server`` is killed
  with SIGKILL a third of the way in; the server restarts it. Counts failed requests and checks that every
  adapter id answered during the run is in Redis once it is back.
* ``sigterm``: ``--streams`` chat streams are running when the server gets SIGTERM; each must end with a
  final chunk (a finish reason and ``[DONE]``); the adapters made before are in Redis after a restart.
* ``corrupt``: stored entries are corrupted in Redis four ways (flipped bytes, truncated value, wrong
  shapes, another checkpoint's entry); a new server must detect each one, regenerate it and count it in
  ``t2l_redis_corrupt_entries_total``.

    .venv/bin/python -m bench.load [--requests 2000] [--clients 64] [--json OUT]
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.server import Server, descriptions
from bench.stats import write_json
from hypernet.adapter import LoraAdapter
from hypernet.settings import Settings
from server.redis_server import SOCKET_NAME, EmbeddedRedis
from server.store import KEY, checksum

KINDS = ("adapter", "chat_inline", "chat_stream", "chat_by_id", "models", "download")
WEIGHTS = (0.35, 0.2, 0.15, 0.15, 0.1, 0.05)
PROMPT = [{"role": "user", "content": "Is 'the food was cold and the staff rude' positive or negative?"}]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def redis_pid(server_pid: int) -> int:
    """The embedded redis-server: the server process's child."""
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if "redis-server" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                return int(child)
    raise RuntimeError("no embedded redis-server under the server process")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


class Campaign:
    """One phase's traffic: the mix, the ids seen, latencies, statuses and errors."""

    def __init__(self, url: str, model: str, texts: list[str], max_tokens: int, seed: int):
        self.url, self.model, self.texts, self.max_tokens = url, model, texts, max_tokens
        self.rng = random.Random(seed)
        self.ids: set[str] = set()
        self.latency: dict[str, list[float]] = {k: [] for k in KINDS}
        self.statuses: Counter = Counter()
        self.errors: Counter = Counter()

    def _chat(self, **fields) -> dict:
        return {"messages": PROMPT, "max_tokens": self.max_tokens, "temperature": 0, **fields}

    async def one(self, client: httpx.AsyncClient, kind: str) -> None:
        description = self.rng.choice(self.texts)
        start = time.perf_counter()
        try:
            if kind == "adapter":
                response = await client.post("/v1/adapters", json={"description": description})
                if response.status_code == 200:
                    self.ids.add(response.json()["id"])
            elif kind in ("chat_inline", "chat_stream"):
                body = self._chat(
                    model=self.model, task_description=description, stream=kind == "chat_stream"
                )
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    text = (await response.aread()).decode(errors="replace")
                if response.status_code == 200 and kind == "chat_stream" and not text.endswith("[DONE]\n\n"):
                    self.errors["stream_without_done"] += 1
                if response.status_code == 200 and kind == "chat_inline":
                    self.ids.add(json.loads(text)["adapter"]["id"])
            elif kind == "chat_by_id" and self.ids:
                adapter_id = self.rng.choice(sorted(self.ids))
                response = await client.post("/v1/chat/completions", json=self._chat(model=adapter_id))
            elif kind == "download" and self.ids:
                adapter_id = self.rng.choice(sorted(self.ids))
                response = await client.get(f"/v1/adapters/{adapter_id}/download", params={"format": "zip"})
            else:
                kind = "models"
                response = await client.get("/v1/models")
        except httpx.HTTPError as err:
            self.errors[type(err).__name__] += 1
            return
        self.latency[kind].append((time.perf_counter() - start) * 1000)
        self.statuses[response.status_code] += 1
        if response.status_code != 200:
            self.errors[f"http_{response.status_code}"] += 1

    async def run(self, requests: int, clients: int, deadline_s: float, during=None) -> float:
        """Send ``requests`` from ``clients`` workers (stop at ``deadline_s``); ``during(done)`` is called
        after each request, for faults injected mid-run. Returns the wall time."""
        kinds = self.rng.choices(KINDS, WEIGHTS, k=requests)
        queue: asyncio.Queue = asyncio.Queue()
        for kind in kinds:
            queue.put_nowait(kind)
        done, start = [0], time.perf_counter()

        async def worker(client: httpx.AsyncClient) -> None:
            while not queue.empty() and time.perf_counter() - start < deadline_s:
                await self.one(client, queue.get_nowait())
                done[0] += 1
                if during is not None:
                    during(done[0])

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=self.url, timeout=300, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(clients)))
        return time.perf_counter() - start

    def report(self, wall_s: float) -> dict:
        total = sum(self.statuses.values())
        return {
            "requests": total,
            "wall_s": wall_s,
            "requests_per_s": total / wall_s,
            "per_kind_ms": {
                k: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "n": len(v)}
                for k, v in self.latency.items()
                if v
            },
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors_5xx": sum(v for k, v in self.statuses.items() if k >= 500),
            "errors": dict(self.errors),
        }


def redis_client(state: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(state / SOCKET_NAME), socket_timeout=5)


def missing_from_redis(state: Path, ids: set[str], wait_s: float = 15.0) -> list[str]:
    """The ids not (yet) stored in Redis once ``wait_s`` has passed (writes happen behind responses)."""
    client, deadline = redis_client(state), time.monotonic() + wait_s
    while True:
        missing = [i for i in ids if not client.exists(KEY + i)]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.25)


def create(url: str, description: str) -> dict:
    response = httpx.post(f"{url}/v1/adapters", json={"description": description}, timeout=60)
    response.raise_for_status()
    return response.json()


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def phase_load(args, state: Path, texts: list[str], model: str) -> tuple[dict, set[str]]:
    server = Server(state, state / "server.log")
    try:
        server.wait_ready()
        warm = Campaign(server.url, model, texts[:8], args.max_tokens, seed=1)
        asyncio.run(warm.run(32, 8, args.deadline_s))  # lazy initialisation, left out
        before = rss_mb(server.process.pid)
        campaign = Campaign(server.url, model, texts, args.max_tokens, seed=2)
        wall = asyncio.run(campaign.run(args.requests, args.clients, args.deadline_s))
        result = campaign.report(wall) | {"rss_mb_before": before, "rss_mb_after": rss_mb(server.process.pid)}
        return result, campaign.ids
    finally:
        server.stop()


def phase_redis_kill(args, state: Path, texts: list[str], model: str) -> dict:
    server = Server(state, state / "server.log")
    try:
        server.wait_ready()
        victim = redis_pid(server.process.pid)
        requests = max(30, args.requests // 3)
        killed: list[float] = []

        def kill_once(done: int) -> None:
            if not killed and done >= requests // 3:
                os.kill(victim, signal.SIGKILL)
                killed.append(time.perf_counter())

        campaign = Campaign(server.url, model, [f"{t} (kill phase)" for t in texts], args.max_tokens, seed=3)
        wall = asyncio.run(campaign.run(requests, args.clients, args.deadline_s, kill_once))
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/readyz", timeout=10).json()["status"] != "ready":
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        missing = missing_from_redis(state, campaign.ids)
        failed = sum(v for k, v in campaign.statuses.items() if k >= 500) + sum(
            v for k, v in campaign.errors.items() if not k.startswith("http_4")
        )
        return campaign.report(wall) | {
            "redis_killed": bool(killed),
            "redis_restarts": metric(server.url, "t2l_redis_restarts_total"),
            "failed_requests": failed,
            "ids_answered": len(campaign.ids),
            "ids_missing_from_redis": len(missing),
        }
    finally:
        server.stop()


async def _streams(url: str, model: str, texts: list[str], n: int, tokens: int, on_started) -> list[str]:
    """``n`` streams of ``tokens``-long answers; ``on_started`` runs once all have sent a first chunk."""
    started, ends = asyncio.Event(), []
    count = [0]

    async def stream(i: int) -> None:
        body = {
            "model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "task_description": texts[i % len(texts)],
        }  # fmt: skip
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    lines, first = [], True
                    async for line in response.aiter_lines():
                        lines.append(line)
                        if first and line.startswith("data:"):
                            first, count[0] = False, count[0] + 1
                            if count[0] == n:
                                started.set()
                finish = [json.loads(x[5:]) for x in lines if x.startswith("data: {")]
                reasons = [c["choices"][0].get("finish_reason") for c in finish if c.get("choices")]
                done = lines and lines[-1 if lines[-1] else -2] == "data: [DONE]"
                ends.append("finished" if done and any(reasons) else "cut")
            except httpx.HTTPError as err:
                ends.append(type(err).__name__)

    tasks = [asyncio.create_task(stream(i)) for i in range(n)]
    await asyncio.wait_for(started.wait(), timeout=120)
    on_started()
    await asyncio.gather(*tasks)
    return ends


def phase_sigterm(args, state: Path, texts: list[str], model: str) -> dict:
    server = Server(state, state / "server.log")
    try:
        server.wait_ready()
        made = [create(server.url, f"{t} (sigterm)")["id"] for t in texts[:5]]
        ends = asyncio.run(
            _streams(
                server.url,
                model,
                texts,
                args.streams,
                args.stream_tokens,
                lambda: server.process.send_signal(signal.SIGTERM),
            )
        )
        server.process.wait(timeout=120)
        exit_code = server.process.returncode
    finally:
        server.stop()
    again = Server(state, state / "server.log")
    try:
        again.wait_ready()
        missing = missing_from_redis(state, set(made), wait_s=0)
    finally:
        again.stop()
    return {
        "streams": len(ends),
        "ended_with_final_chunk": ends.count("finished"),
        "cut": len(ends) - ends.count("finished"),
        "server_exit_code": exit_code,
        "adapters_lost": len(missing),
    }


def corrupt(fields: dict, how: str) -> dict:
    data = fields[b"data"]
    if how == "flipped_bytes":
        flipped = bytearray(data)
        for i in range(len(flipped) // 2, len(flipped) // 2 + 16):
            flipped[i] ^= 0xFF
        return {b"data": bytes(flipped)}
    if how == "truncated":
        return {b"data": data[: len(data) // 3]}
    if how == "wrong_shape":  # a valid, checksummed entry of rank 1: only the shape check can refuse it
        adapter = LoraAdapter.from_bytes(data)
        adapter.A = {m: a[:, :1] for m, a in adapter.A.items()}
        adapter.B = {m: b[..., :1] for m, b in adapter.B.items()}
        adapter.rank = 1
        raw = adapter.to_bytes()
        return {b"data": raw, b"checksum": checksum(raw).encode()}
    return {b"checkpoint": b"ck-000000000000"}  # another checkpoint's entry


def phase_corrupt(args, state: Path, texts: list[str], model: str) -> dict:
    kinds = ("flipped_bytes", "truncated", "wrong_shape", "other_checkpoint")
    server = Server(state, state / "server.log")
    try:
        server.wait_ready()
        ids = [create(server.url, f"{t} (corrupt)")["id"] for t in texts[: len(kinds)]]
        missing_from_redis(state, set(ids))
    finally:
        server.stop()
    own = EmbeddedRedis(state)  # the stopped server's Redis, on its own, to corrupt what it stored
    own.start()
    try:
        client = redis_client(state)
        originals = {i: LoraAdapter.from_bytes(client.hget(KEY + i, "data")) for i in ids}
        for adapter_id, how in zip(ids, kinds, strict=True):
            client.hset(KEY + adapter_id, mapping=corrupt(client.hgetall(KEY + adapter_id), how))
    finally:
        own.stop()
    again = Server(state, state / "server.log")
    try:
        again.wait_ready()
        tiers = [create(again.url, f"{t} (corrupt)")["cached"] for t in texts[: len(kinds)]]
        counted = metric(again.url, "t2l_redis_corrupt_entries_total")
        missing_from_redis(state, set(ids))
        client = redis_client(state)
        restored = [LoraAdapter.from_bytes(client.hget(KEY + i, "data")) for i in ids]
    finally:
        again.stop()
    identical = sum(
        all(torch.equal(a.B[m], originals[i].B[m]) and torch.equal(a.A[m], originals[i].A[m]) for m in a.A)
        for i, a in zip(ids, restored, strict=True)
    )
    return {
        "corrupted": len(kinds),
        "regenerated": tiers.count(False),
        "counted_in_metric": counted,
        "restored_identical": identical,
        "detected_share": tiers.count(False) / len(kinds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--descriptions", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="streams running when SIGTERM arrives")
    parser.add_argument(
        "--stream-tokens", type=int, default=400, help="each stream's max_tokens: SIGTERM lets them finish"
    )
    parser.add_argument("--deadline-s", type=float, default=1800, help="stop sending after this long")
    parser.add_argument("--phases", nargs="+", default=["load", "redis_kill", "sigterm", "corrupt"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings()
    texts = descriptions(settings.data_dir, args.descriptions)
    model = settings.base_model
    phases = {
        "load": phase_load,
        "redis_kill": phase_redis_kill,
        "sigterm": phase_sigterm,
        "corrupt": phase_corrupt,
    }
    result: dict = {"settings": vars(args) | {"json": str(args.json)}}
    for name in args.phases:
        state = Path(tempfile.mkdtemp(prefix=f"t2l-load-{name}-", dir="/tmp"))
        try:
            outcome = phases[name](args, state, texts, model)
            result[name] = outcome[0] if isinstance(outcome, tuple) else outcome
        except BaseException:
            log = state / "server.log"
            if log.exists():
                print(
                    f"server log of {name}:\n" + "\n".join(log.read_text().splitlines()[-20:]),
                    file=sys.stderr,
                )
            raise
        finally:
            shutil.rmtree(state, ignore_errors=True)
        print(json.dumps({name: result[name]}, indent=2))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
