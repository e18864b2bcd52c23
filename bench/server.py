"""Benchmark: the HTTP server end to end, over loopback, on the default base (SmolLM2-135M).

Starts ``t2l serve`` itself (a separate process, on a free port, with a fresh temporary ``T2L_STATE_DIR``
so its embedded Redis starts empty), waits for ``/readyz``, drives it with httpx from this process, one
request at a time, and stops it with SIGINT at the end (also on errors). Every time is client-observed:
from sending the request to reading the response (or the first token). Measures:

* ``POST /v1/adapters`` p50/p95 for three tiers, each checked against the response's ``cached`` field:
  **cold** (``--n`` descriptions never seen: embed + hypernetwork + Redis write), **L1 hit** (the same
  descriptions again, same process), **Redis hit** (the same descriptions after a server restart on the
  same state dir: the new process has an empty L1, so each request is a real Redis read of the stored
  safetensors bytes, checksum check and deserialisation, then an L1 fill). The server-side store time
  (``timings_ms.total``) is reported beside each, to separate HTTP overhead from the store's own work.
  Two baselines are interleaved with them: each cold POST with the same description made in this process
  by the library (``AdapterGenerator.generate``: what embed and hypernet cost outside the server), and
  each L1 hit with ``GET /healthz`` (the HTTP round trip with no work behind it).
* chat time to first token (``stream: true``; from sending the request to the first SSE chunk with
  non-empty content) for (a) a **new description** inline via ``task_description`` (a cold adapter every
  time: generation, slot upload, then decoding) and (b) the **base model** (no adapter): same prompt,
  ``max_tokens`` 8, temperature 0, interleaved A/B then B/A so drift hits both equally.
- Chat TTFT **under load**: new-description requests while ``--load`` other clients (threads of this
  process) keep 64-token generations with their own adapters running, against the idle figure above.

Targets (issue 13): p50 of L1 hit ≤ 1 ms, Redis hit ≤ 3 ms, cold ≤ 25 ms; new-description TTFT p50
≤ base TTFT p50 + 20 ms; under load ≤ 1.25x the idle new-description TTFT. The server gets this process's
``T2L_*`` environment (``T2L_BASE_DTYPE``, ``T2L_DEVICE``), and the PEFT row loads the base the same way.
Descriptions are real SNI task descriptions (``../shared/data/sni/tasks/*.json``) taken
round-robin across tasks when present, else synthetic ones. Each server first gets 10 warm-up requests
per kind, left out of the numbers. Run from the repository root (a few minutes on 2 CPU cores):

    .venv/bin/python -m bench.server [--n 100] [--max-tokens 8] [--json OUT] [--keep-state]
"""

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import httpx

from bench.stats import summary, write_json
from hypernet.checkpoint import default_checkpoint
from hypernet.generator import AdapterGenerator
from server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[1]
TARGET_LOAD_RATIO = 1.25  # issue 13: a request arriving during long generations, against an idle server
TARGETS_MS = {"l1": 1.0, "redis": 3.0, "cold": 25.0}
PARTS = ("embed", "hypernet", "redis_read", "decode")  # the server's timings_ms besides its total
TARGET_TTFT_EXTRA_MS = 20.0
WARMUP = 10
PROMPT = "Is the following review positive or negative? 'The plot dragged, but the acting was superb.'"


def descriptions(data_dir: Path, n: int) -> list[str]:
    """Distinct real SNI task descriptions, round-robin over tasks, else varied synthetic ones."""
    per_task = [
        json.loads(task.read_text())["descriptions"]
        for task in sorted((data_dir / "sni" / "tasks").glob("*.json"))
    ]
    found: dict[str, str] = {}  # normalised text → text: the server ids adapters by normalised text
    for i in range(max((len(d) for d in per_task), default=0)):
        for texts in per_task:
            if i < len(texts):
                found.setdefault(" ".join(texts[i].lower().split()), texts[i])
        if len(found) >= n:
            break
    texts = list(found.values())
    verbs = ["Classify", "Summarise", "Translate", "Answer questions about", "Extract entities from"]
    texts += [f"{verbs[i % 5]} texts of kind {i} and explain the answer step by step" for i in range(n)]
    return texts[:n]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One ``t2l serve`` process on a free loopback port, its output in ``log``."""

    def __init__(self, state_dir: Path, log: Path, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in ("T2L_REDIS_URL", "T2L_PORT", "T2L_HOST")}
        env |= {"T2L_STATE_DIR": str(state_dir), "T2L_API_KEYS": "[]", **(extra_env or {})}
        serve = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command = [sys.executable, "-m", "server.cli", *serve]
        self._out = log.open("ab")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._out, stderr=self._out)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"{self.url}/readyz", timeout=5)
                if response.status_code == 200:
                    ready = response.json()
                    if ready.get("redis") != "ok":
                        raise RuntimeError(f"the server is up but its Redis is not: {ready}")
                    return ready
            time.sleep(0.25)
        raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s:\n{self.tail()}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGINT (uvicorn's graceful shutdown, which saves and stops the embedded Redis), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                print(
                    f"server {self.process.pid} ignored SIGINT for {timeout_s:.0f} s: kill", file=sys.stderr
                )
                self.process.kill()
                self.process.wait()
        self._out.close()


@contextlib.contextmanager
def running(state_dir: Path, log: Path):
    server = Server(state_dir, log)
    try:
        ready = server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            yield client, ready
    finally:
        server.stop()


def post_adapter(client: httpx.Client, description: str, expect: str | bool) -> tuple[float, dict]:
    """Client-observed ms and the server's own ``timings_ms`` for one POST, checking the tier it hit."""
    start = time.perf_counter()
    response = client.post("/v1/adapters", json={"description": description})
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"POST /v1/adapters answered {response.status_code}: {response.text[:500]}")
    body = response.json()
    if body["cached"] != expect:
        raise RuntimeError(f"expected cached={expect!r}, got {body['cached']!r} for {description[:60]!r}")
    return elapsed, body["timings_ms"]


def ttft(client: httpx.Client, model: str, max_tokens: int, task_description: str | None = None) -> float:
    """ms from sending a streaming chat request to the first chunk with non-empty content."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    if task_description is not None:
        payload["task_description"] = task_description
    first: float | None = None
    start = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"chat answered {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():  # read to the end, so the next request finds the engine idle
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise RuntimeError(f"chat stream error: {chunk['error']}")
            ref = chunk.get("adapter")
            if task_description is not None and ref and ref["cached"] is not False:
                raise RuntimeError(f"expected a cold inline adapter, got cached={ref['cached']!r}")
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = (time.perf_counter() - start) * 1000
    if first is None:
        raise RuntimeError(f"the stream had no content within {max_tokens} tokens: raise --max-tokens")
    return first


def under_load(url: str, model: str, streams: int, texts: list[str], max_tokens: int) -> list[float]:
    """TTFT of new-description requests while ``streams`` other clients keep long generations running."""
    stop = threading.Event()

    def keep_busy(k: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            while not stop.is_set():
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": PROMPT}],
                    "max_tokens": 64,
                    "temperature": 0,
                    "ignore_eos": True,  # long generations: an adapter may well answer in two tokens
                    "stream": True,
                    "task_description": f"Busy task number {k}.",
                }
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    for _ in response.iter_lines():
                        if stop.is_set():
                            break

    workers = [threading.Thread(target=keep_busy, args=(k,), daemon=True) for k in range(streams)]
    for worker in workers:
        worker.start()
    time.sleep(3.0)  # the background streams are admitted and decoding
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            return [ttft(client, model, max_tokens, text) for text in texts]
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)


def tier(client: httpx.Client, texts: list[str], expect: str | bool) -> dict[str, list[float]]:
    """Client ms, and the server's store total and its parts (embed/hypernet when it generated, the
    Redis read and the entry's check-and-decode on a Redis hit), per request."""
    rows: dict[str, list[float]] = {"client": [], "server": [], **{part: [] for part in PARTS}}
    for text in texts:
        elapsed, timings = post_adapter(client, text, expect)
        rows["client"].append(elapsed)
        rows["server"].append(timings["total"])
        for part in PARTS:
            if timings.get(part) is not None:
                rows[part].append(timings[part])
    return {k: v for k, v in rows.items() if v}


def cold_beside_in_process(
    client: httpx.Client, generator: AdapterGenerator, texts: list[str]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Cold POSTs, each followed or preceded (alternating) by the same new description made in this
    process by the library (``AdapterGenerator.generate``, as ``bench.generate`` does): the server's
    embed and hypernet times against the library's, measured in the same run on the same texts."""
    server: dict[str, list[float]] = {"client": [], "server": [], "embed": [], "hypernet": []}
    library: dict[str, list[float]] = {"total": [], "embed": [], "hypernet": []}

    def post(i: int) -> float:
        elapsed, timings = post_adapter(client, texts[i], False)
        for key, value in (("client", elapsed), *((k, timings[k]) for k in ("embed", "hypernet"))):
            server[key].append(value)
        server["server"].append(timings["total"])
        return elapsed

    def in_process(i: int) -> float:
        _, timings = generator.generate([texts[i]])
        library["total"].append(timings.total_ms)
        library["embed"].append(timings.embed_ms)
        library["hypernet"].append(timings.hypernet_ms)
        return timings.total_ms

    interleaved(len(texts), post, in_process)
    return server, library


def l1_beside_floor(client: httpx.Client, texts: list[str]) -> tuple[dict[str, list[float]], list[float]]:
    """L1-hit POSTs interleaved with ``GET /healthz``: the HTTP round trip through the same client,
    middlewares and server with no work behind it, the floor under any endpoint."""
    rows: dict[str, list[float]] = {"client": [], "server": []}

    def post(i: int) -> float:
        elapsed, timings = post_adapter(client, texts[i], "l1")
        rows["client"].append(elapsed)
        rows["server"].append(timings["total"])
        return elapsed

    def floor(_: int) -> float:
        start = time.perf_counter()
        client.get("/healthz").raise_for_status()
        return (time.perf_counter() - start) * 1000

    _, floors = interleaved(len(texts), post, floor)
    return rows, floors


def interleaved(n: int, a: Callable[[int], float], b: Callable[[int], float]) -> tuple[list, list]:
    """``n`` samples of each, alternating which goes first, so drift hits both equally."""
    out_a, out_b = [], []
    for i in range(n):
        if i % 2:
            out_b.append(b(i))
            out_a.append(a(i))
        else:
            out_a.append(a(i))
            out_b.append(b(i))
    return out_a, out_b


def peft_by_hand(settings: ServerSettings, generator: AdapterGenerator, texts: list[str]) -> list[float]:
    """TTFT of what a user writes without our server: generate the adapter with the library, write its
    PEFT folder, ``load_adapter`` + ``set_adapter`` on a resident PeftModel, then generate to the first
    token (``max_new_tokens=1``: prefill and one step). In process, no HTTP: a floor for that path."""
    import torch
    from peft import PeftModel

    from hypernet.base import load_base
    from hypernet.chat import chat_ids

    dtype, device = settings.torch_base_dtype(), settings.torch_device()
    model, tokenizer = load_base(settings.base_model, settings.checkpoints_dir, dtype, device)
    prompt = chat_ids(tokenizer, [{"role": "user", "content": PROMPT}], generation_prompt=True)
    ids = torch.tensor([prompt], device=model.device)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        (first,), _ = generator.generate(["warm-up adapter"])
        peft = PeftModel.from_pretrained(model, str(first.save_peft(Path(tmp) / "warm")), adapter_name="warm")
        for i, text in enumerate(texts):
            start = time.perf_counter()
            (adapter,), _ = generator.generate([text])
            path = adapter.save_peft(Path(tmp) / f"a{i}")
            peft.load_adapter(str(path), adapter_name=f"a{i}")
            peft.set_adapter(f"a{i}")
            with torch.inference_mode():
                peft.generate(input_ids=ids, max_new_tokens=1, do_sample=False)
            times.append((time.perf_counter() - start) * 1000)
            with warnings.catch_warnings():  # "adapter a{i} was active ...": it was, on purpose
                warnings.simplefilter("ignore", UserWarning)
                peft.delete_adapter(f"a{i}")  # as a long-running process must, or memory grows per request
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens of the chat requests")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep-state", action="store_true", help="keep the state dir (server logs, Redis)")
    parser.add_argument("--load", type=int, default=7, help="background streams in the under-load TTFT run")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("--n must be at least 2")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` too stops the server it started

    settings = ServerSettings()
    base_model = settings.base_model  # the server reads the same T2L_BASE_MODEL
    texts = descriptions(settings.data_dir, 2 * (WARMUP + args.n))
    warm, cold = texts[:WARMUP], texts[WARMUP : WARMUP + args.n]
    chat_warm, chat_new = texts[WARMUP + args.n : 2 * WARMUP + args.n], texts[2 * WARMUP + args.n :]
    # short path: the embedded Redis listens on a unix socket in here
    state = Path(tempfile.mkdtemp(prefix="t2l-bench-", dir="/tmp" if Path("/tmp").is_dir() else None))
    log = state / "server.log"
    rows: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    generator = AdapterGenerator.load(
        settings.checkpoint or default_checkpoint(settings.checkpoints_dir),
        device=settings.torch_device(),
        runtime=settings.generator_runtime,
        cache_dir=settings.cache_dir,
    )  # as the server loads it
    generator.generate(warm)  # the library's first call pays for lazy initialisation too
    try:
        with running(state, log) as (client, ready):
            for text in warm:  # first requests pay for lazy initialisation; keep them out
                post_adapter(client, text, False)
                post_adapter(client, text, "l1")
            rows["cold"], rows["cold_in_process"] = cold_beside_in_process(client, generator, cold)
            rows["l1"], floor = l1_beside_floor(client, cold)
            rows["http_floor"] = {"client": floor}
            for text in chat_warm:
                ttft(client, base_model, args.max_tokens, text)
                ttft(client, base_model, args.max_tokens)
            new, base = interleaved(
                args.n,
                lambda i: ttft(client, base_model, args.max_tokens, chat_new[i]),
                lambda i: ttft(client, base_model, args.max_tokens),
            )
            rows["ttft_new"], rows["ttft_base"] = {"client": new}, {"client": base}
            # as many as the idle row: the busy p50 is the noisier one (25 requests moved it by ±5 ms)
            busy_texts = [f"{t} (variant {i} under load)" for i, t in enumerate(chat_new[: args.n])]
            rows["ttft_busy"] = {
                "client": under_load(str(client.base_url), base_model, args.load, busy_texts, args.max_tokens)
            }
        with running(state, log) as (client, _):  # same state dir: Redis has them, L1 is empty
            for text in warm:
                post_adapter(client, text, "redis")
            rows["redis"] = tier(client, cold, "redis")
        rows["ttft_peft"] = {
            "client": peft_by_hand(settings, generator, [f"{t} (by hand)" for t in chat_new])
        }
    except BaseException:
        if log.exists():
            print(f"server log ({log}), last lines:\n" + "\n".join(log.read_text().splitlines()[-20:]))
        raise
    finally:
        if not args.keep_state:
            shutil.rmtree(state, ignore_errors=True)
    wall_s = time.perf_counter() - started

    result: dict = {}
    for key in ("cold", "l1", "redis"):
        result[f"adapters_{key}"] = summary(rows[key]["client"])
        result[f"adapters_{key}_server"] = summary(rows[key]["server"])
        for part in PARTS:
            if part in rows[key]:
                result[f"adapters_{key}_server_{part}"] = summary(rows[key][part])
    for part, samples in rows["cold_in_process"].items():  # the library's total, embed and hypernet
        suffix = "" if part == "total" else f"_{part}"
        result[f"adapters_cold_in_process{suffix}"] = summary(samples)
    result["http_floor"] = summary(rows["http_floor"]["client"])
    result["server_embed_vs_library_p50"] = (
        result["adapters_cold_server_embed"]["p50"] / result["adapters_cold_in_process_embed"]["p50"]
    )
    result["ttft_new_description"] = summary(rows["ttft_new"]["client"])
    result["ttft_base"] = summary(rows["ttft_base"]["client"])
    new_p50, base_p50 = result["ttft_new_description"]["p50"], result["ttft_base"]["p50"]
    result["ttft_p50_diff_ms"] = new_p50 - base_p50
    result["ttft_p50_ratio"] = new_p50 / base_p50
    result["ttft_new_description_under_load"] = summary(rows["ttft_busy"]["client"])
    result["ttft_new_adapter_peft_by_hand"] = summary(rows["ttft_peft"]["client"])
    result["ttft_new_vs_peft_by_hand_p50"] = new_p50 / result["ttft_new_adapter_peft_by_hand"]["p50"]
    result["ttft_under_load_ratio_p50"] = result["ttft_new_description_under_load"]["p50"] / new_p50
    # the same difference per interleaved pair: robust to the drift both members of a pair share
    pairs = [a - b for a, b in zip(rows["ttft_new"]["client"], rows["ttft_base"]["client"], strict=True)]
    result["ttft_paired_diff"] = summary(pairs)
    result["targets_ms"] = {
        **{f"adapters_{k}_p50": v for k, v in TARGETS_MS.items()},
        "ttft_new_minus_base_p50": TARGET_TTFT_EXTRA_MS,
    }
    result["met"] = {
        **{f"adapters_{k}_p50": result[f"adapters_{k}"]["p50"] <= v for k, v in TARGETS_MS.items()},
        "ttft_new_minus_base_p50": result["ttft_p50_diff_ms"] <= TARGET_TTFT_EXTRA_MS,
        "ttft_under_load_p50": result["ttft_under_load_ratio_p50"] <= TARGET_LOAD_RATIO,
    }
    result["samples_ms"] = {f"{k}_{part}": v for k, parts in rows.items() for part, v in parts.items()}
    result["setup"] = {
        "checkpoint": ready["checkpoint"],
        "checkpoint_status": ready["checkpoint_status"],
        "checkpoint_setting": str(settings.checkpoint) if settings.checkpoint else "default",
        "base": settings.base_model,
        "generator_runtime": f"hypernetwork {generator.runtime}, embedder {generator.embedder.runtime}",
        "n": args.n,
        "warmup": WARMUP,
        "max_tokens": args.max_tokens,
        "prompt": PROMPT,
        "redis_tier": "server restarted on the same state dir (empty L1, embedded Redis reloaded)",
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "cpus": os.cpu_count(),
        "device": settings.device,
        "base_dtype": str(settings.torch_base_dtype()).removeprefix("torch."),
        "wall_s": wall_s,
    }

    labels = {
        "adapters_cold": ("POST /v1/adapters cold", f"<= {TARGETS_MS['cold']:.0f}"),
        "adapters_cold_server": ("  (server-side store time)", ""),
        "adapters_cold_server_embed": ("  (server-side: embed)", ""),
        "adapters_cold_server_hypernet": ("  (server-side: hypernet)", ""),
        "adapters_cold_in_process": ("  library in process, same texts", "(interleaved)"),
        "adapters_cold_in_process_embed": ("  (library: embed)", ""),
        "adapters_cold_in_process_hypernet": ("  (library: hypernet)", ""),
        "adapters_l1": ("POST /v1/adapters L1 hit", f"<= {TARGETS_MS['l1']:.0f}"),
        "adapters_l1_server": ("  (server-side store time)", ""),
        "http_floor": ("  GET /healthz (HTTP floor)", "(interleaved)"),
        "adapters_redis": ("POST /v1/adapters Redis hit", f"<= {TARGETS_MS['redis']:.0f}"),
        "adapters_redis_server": ("  (server-side store time)", ""),
        "adapters_redis_server_redis_read": ("  (server-side: Redis read)", ""),
        "adapters_redis_server_decode": ("  (server-side: check, decode)", ""),
        "ttft_base": ("chat TTFT base model", ""),
        "ttft_new_description": ("chat TTFT new description", f"<= base + {TARGET_TTFT_EXTRA_MS:.0f}"),
        "ttft_new_description_under_load": (
            f"  same, {args.load} streams busy",
            f"<= {TARGET_LOAD_RATIO}x idle",
        ),
        "ttft_new_adapter_peft_by_hand": ("PEFT by hand, new adapter", "(peer, in process)"),
    }
    met = {
        "adapters_cold": result["met"]["adapters_cold_p50"],
        "adapters_l1": result["met"]["adapters_l1_p50"],
        "adapters_redis": result["met"]["adapters_redis_p50"],
        "ttft_new_description": result["met"]["ttft_new_minus_base_p50"],
        "ttft_new_description_under_load": result["met"]["ttft_under_load_p50"],
    }
    print(f"{'measurement':<32}{'p50 ms':>9}{'p95 ms':>9}  {'target p50 ms':<16}verdict")
    for key, (label, target) in labels.items():
        verdict = ("met" if met[key] else "MISSED") if key in met else ""
        print(f"{label:<32}{result[key]['p50']:>9.2f}{result[key]['p95']:>9.2f}  {target:<16}{verdict}")
    print(
        f"TTFT new − base, p50: {result['ttft_p50_diff_ms']:+.2f} ms "
        f"(x{result['ttft_p50_ratio']:.2f}); n = {args.n} per row, checkpoint {ready['checkpoint']} "
        f"({ready['checkpoint_status']}), {wall_s:.0f} s"
    )
    print(
        f"server embed / library embed, p50: {result['server_embed_vs_library_p50']:.2f}x "
        f"(the same texts, interleaved)"
    )
    paired = result["ttft_paired_diff"]
    print(f"TTFT new − base per interleaved pair: p50 {paired['p50']:+.2f} ms, p95 {paired['p95']:+.2f} ms")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
