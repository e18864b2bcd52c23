"""Benchmark: running streams' pace while a long prompt is prefilled, whole against in chunks, in process.

Seven streams with distinct adapters decode; once each has a few tokens, a request with a long prompt (and an
adapter of its own) arrives. Prefilled whole, its prompt stalls every stream for the whole prefill;
prefilled ``--chunk`` tokens between two decode steps (``T2L_PREFILL_CHUNK_TOKENS``), the streams take a
token after each chunk. Both ways are measured in the same run, alternated, on one engine: the streams'
longest gap between two tokens while the prompt goes in, their median gap before it arrived, the long
request's time to first token, and the same request's on the idle engine (what chunking costs when nobody
waits). Ratios are chunked over whole, of medians over repetitions.

    python -m bench.long_prompt [--prompt-tokens 1800] [--chunk 256] [--reps 3] [--dtype auto] [--json OUT]
"""

import argparse
import asyncio
import itertools
import statistics
import time
from pathlib import Path

import torch

from bench.engine import chat_prompts, setup
from bench.stats import summary, write_json
from server.engine import Delta, Engine, Finished, Job, Sampling
from server.settings import ServerSettings
from server.threads import on_own_thread

STREAMS = 7
WARM_TOKENS = 8  # tokens every stream has before the long prompt arrives: decoding, past their prefills


def long_prompt(tokenizer, n: int) -> list[int]:
    """``n`` token ids of plain prose (the same in every run)."""
    text = " ".join(f"Paragraph {i}: the river keeps its course past mill number {i}." for i in range(n))
    ids = tokenizer(text)["input_ids"][:n]
    assert len(ids) == n, f"only {len(ids)} tokens of text for a {n}-token prompt"
    return ids


async def token_times(job: Job, times: list[float]) -> None:
    """Append the time of each of the job's text deltas until it finishes."""
    while not isinstance(event := await job.events.get(), Finished):
        if isinstance(event, Delta):
            times.append(time.perf_counter())


async def first_token_ms(engine: Engine, prompt: list[int], slot: int) -> float:
    """Milliseconds from submitting ``prompt`` to its first token."""
    job = Job(prompt, slot, Sampling(2, temperature=0, ignore_eos=True), asyncio.get_running_loop())
    times: list[float] = []
    start = time.perf_counter()
    engine.submit(job)
    await token_times(job, times)
    return (times[0] - start) * 1000


async def busy(
    engine: Engine, streams: list[list[int]], slots: list[int], prompt: list[int], slot: int
) -> dict:
    """Start the streams, wait until each has ``WARM_TOKENS`` tokens, submit the long prompt with adapter
    ``slot``; the streams' gaps before it and while it went in (ms), their tokens meanwhile (each, mean)
    and its time to first token (ms)."""
    loop = asyncio.get_running_loop()
    jobs = [
        Job(p, s, Sampling(4096, temperature=0, ignore_eos=True), loop)
        for p, s in zip(streams, slots, strict=True)
    ]
    times: list[list[float]] = [[] for _ in jobs]
    tasks = [asyncio.create_task(token_times(job, t)) for job, t in zip(jobs, times, strict=True)]
    for job in jobs:
        engine.submit(job)
    while min(map(len, times)) < WARM_TOKENS:
        await asyncio.sleep(0.005)
    long_job = Job(prompt, slot, Sampling(2, temperature=0, ignore_eos=True), loop)
    first: list[float] = []
    submitted = time.perf_counter()
    engine.submit(long_job)
    await token_times(long_job, first)
    await asyncio.sleep(0.1)  # the streams' next tokens: the gap spanning the first token is counted
    for job in jobs:
        job.cancelled.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.2)  # the engine drops the cancelled rows
    pairs = [pair for t in times for pair in itertools.pairwise(t)]
    return {
        "gap_before_ms": statistics.median(b - a for a, b in pairs if b < submitted) * 1000,
        "longest_gap_ms": max(b - a for a, b in pairs if b > submitted and a < first[0]) * 1000,
        "tokens_meanwhile": sum(submitted < t < first[0] for s in times for t in s) / len(jobs),
        "ttft_ms": (first[0] - submitted) * 1000,
    }


async def measure(args: argparse.Namespace) -> dict:
    kit = await on_own_thread(setup, args)
    slots = [await kit.bank.acquire(f"a{i}", a) for i, a in enumerate(kit.adapters[: STREAMS + 1])]
    streams, prompt = chat_prompts(kit.tokenizer, STREAMS), long_prompt(kit.tokenizer, args.prompt_tokens)
    engine = kit.engine()
    engine.max_batch = STREAMS + 1
    engine.start()
    modes = {"whole": None, "chunked": args.chunk}
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    try:
        for chunk in modes.values():  # warm-up, both ways
            engine.prefill_chunk = chunk
            await first_token_ms(engine, prompt[:300], slots[STREAMS])
        for _ in range(args.reps):
            for mode, chunk in modes.items():
                engine.prefill_chunk = chunk
                idle = await first_token_ms(engine, prompt, slots[STREAMS])
                measured = await busy(engine, streams, slots[:STREAMS], prompt, slots[STREAMS])
                runs[mode].append({"idle_ttft_ms": idle, **measured})
    finally:
        engine.stop()
    result: dict = {
        "setup": {
            "prompt_tokens": args.prompt_tokens,
            "chunk": args.chunk,
            "streams": STREAMS,
            "reps": args.reps,
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
        },
    }
    for mode, reps in runs.items():
        result[mode] = {key: summary([r[key] for r in reps]) for key in reps[0]}
    result["chunked_over_whole"] = {
        key: result["chunked"][key]["p50"] / result["whole"][key]["p50"]
        for key in result["whole"]
        if key.endswith("_ms")
    }
    return result


def main() -> None:
    settings = ServerSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=1800)
    parser.add_argument("--chunk", type=int, default=settings.prefill_chunk_tokens, help="tokens per chunk")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="the base's dtype; auto = the server's (T2L_BASE_DTYPE)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.dtype == "auto":
        args.dtype = str(settings.torch_base_dtype()).removeprefix("torch.")
    result = asyncio.run(measure(args))
    print(
        f"a {args.prompt_tokens}-token prompt arriving during {STREAMS} streams ({args.dtype}; p50 of reps)"
    )
    print(f"{'':<34}{'whole':>10}{'chunked':>10}{'ratio':>8}")
    names = {
        "gap_before_ms": "streams' gap before it",
        "longest_gap_ms": "streams' longest gap meanwhile",
        "tokens_meanwhile": "streams' tokens meanwhile (each)",
        "ttft_ms": "its first token, busy",
        "idle_ttft_ms": "its first token, idle engine",
    }
    for key, name in names.items():
        whole, chunked = result["whole"][key]["p50"], result["chunked"][key]["p50"]
        ratio = result["chunked_over_whole"].get(key)
        print(f"{name:<34}{whole:>10.1f}{chunked:>10.1f}{'' if ratio is None else f'{ratio:>8.2f}'}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
