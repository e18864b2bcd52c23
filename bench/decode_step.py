"""Benchmark: one decode step of the engine with its in-place KV cache against transformers' DynamicCache,
or (``--compile``) the engine's decode step eager against ``torch.compile``.

The same engine, prompts and distinct adapters (one per row), prefilled once per repetition, then
``--steps`` decode steps timed one by one; the two variants alternate repetitions so drift hits both.
The greedy tokens of both must be identical (checked). Prints p50/p95 ms per step and the ratio. On the
CPU: the question is what ``torch.cat`` of the whole cache costs a step there, and whether compiling
pays. ``--compile layers`` compiles each decoder layer's MLP and RMSNorms (the fusable elementwise
work; attention and its cache stay eager), ``--compile model`` the whole forward, both with dynamic
shapes (batch and length change every step); compilation happens in a first, untimed repetition.

    python -m bench.decode_step [--batch 16] [--steps 48] [--reps 6] [--dtype float32]
                                [--compile {layers,model}] [--json OUT]
"""

import argparse
import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import DynamicCache

from bench.engine import bench_adapters, chat_prompts
from bench.stats import summary, write_json
from hypernet.base import load_base
from hypernet.checkpoint import default_checkpoint
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers, products_dtype
from hypernet.settings import Settings
from server.engine import Engine, Job, Sampling
from server.kv_cache import roomy_cache
from server.slots import SlotBank

CACHES = {"DynamicCache (torch.cat per step)": DynamicCache, "ours (written in place)": roomy_cache}


@contextlib.contextmanager
def compiled(model: torch.nn.Module, what: str) -> Iterator[None]:
    """Run ``model`` with ``what`` ("layers" or "model") compiled, eager again on exit. The compiled
    functions are made once per module and kept, so later repetitions reuse their graphs."""
    if what == "model":
        modules = [model]
    else:
        modules = [
            m
            for layer in model.model.layers
            for m in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm)
        ]
    for module in modules:
        if not hasattr(module, "_bench_compiled"):
            module._bench_compiled = torch.compile(module.forward, dynamic=True)
        module.forward = module._bench_compiled
    try:
        yield
    finally:
        for module in modules:
            del module.forward  # the class's eager forward again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, choices=range(1, 17), metavar="1..16")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--reps", type=int, default=6, help="repetitions per variant, alternating")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", choices=["layers", "model"], help="eager against torch.compile")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    settings = Settings()
    generator = AdapterGenerator.load(settings.checkpoint or default_checkpoint(settings.checkpoints_dir))
    adapters = bench_adapters(generator, args.batch)
    dtype = getattr(torch, args.dtype)
    model, tokenizer = load_base(settings.base_model, settings.checkpoints_dir, dtype, "cpu")
    spec = generator.config.base
    lora_dtype = products_dtype(dtype, "cpu")  # as the server's
    bank = SlotBank(spec, generator.config.hypernet.rank, args.batch, "cpu", lora_dtype)
    layers = LoraLayers(model, spec, lora_dtype)
    loop = asyncio.new_event_loop()  # never run: the jobs' events just queue up
    slots = [loop.run_until_complete(bank.acquire(f"a{i}", a)) for i, a in enumerate(adapters)]
    prompts = chat_prompts(tokenizer, args.batch)
    scaling = generator.config.hypernet.scaling
    compiling = functools.partial(compiled, model, args.compile)
    if args.compile:
        engine = Engine(model, tokenizer, layers, bank, scaling, 16)
        variants: dict[str, tuple[Engine, Callable[[], contextlib.AbstractContextManager]]] = {
            "eager": (engine, contextlib.nullcontext),
            f"torch.compile ({args.compile})": (engine, compiling),
        }
    else:
        variants = {
            name: (
                Engine(model, tokenizer, layers, bank, scaling, 16, new_cache=make),
                contextlib.nullcontext,
            )
            for name, make in CACHES.items()
        }

    def steps(engine: Engine) -> tuple[list[float], list[list[int]]]:
        jobs = [
            Job(p, slot, Sampling(args.steps + 1, temperature=0, ignore_eos=True), loop)
            for p, slot in zip(prompts, slots, strict=True)
        ]
        times = []
        with torch.inference_mode():
            batch = engine._prefill(jobs)
            for _ in range(args.steps):
                start = time.perf_counter()
                batch = engine._step(batch)
                times.append((time.perf_counter() - start) * 1000)
        return times, [row.tokens for row in batch.rows]

    compile_s = None
    if args.compile:  # compile (and recompile for the shapes a run sees) outside the timings
        start = time.perf_counter()
        with compiling():
            steps(engine)
        compile_s = time.perf_counter() - start
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, list] = {}
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else reversed(names):
            engine, context = variants[name]
            with context():
                measured, tokens[name] = steps(engine)
            times[name] += measured
    if len({str(t) for t in tokens.values()}) != 1:
        raise SystemExit(f"{names[0]} and {names[1]} gave different greedy tokens")
    result = {name: summary(ms) for name, ms in times.items()}
    base, ours = (result[name]["p50"] for name in names)
    result["ratio_p50"] = base / ours
    print(f"decode step, {args.dtype}, batch {args.batch}, {args.batch} distinct adapters   p50 ms   p95 ms")
    for name in names:
        print(f"  {name:40s} {result[name]['p50']:8.1f} {result[name]['p95']:8.1f}")
    print(f"{names[1]} is {result['ratio_p50']:.3f}x as fast at p50; greedy tokens identical")
    if compile_s is not None:
        result["compile_s"] = compile_s
        print(f"compiling (first repetition, untimed): {compile_s:.0f} s")
    if args.json:
        write_json(args.json, result | {"args": {k: v for k, v in vars(args).items() if k != "json"}})


if __name__ == "__main__":
    main()
