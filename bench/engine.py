"""Benchmark: many adapters in one batch against the plain base model, in process.

Decode throughput of the engine (continuous batching, per-row adapters from the slot bank) with 1, 4,
8 and 16 distinct adapters at batch 8 and 16, each against plain transformers ``generate`` of the base
model (no LoRA layers at all) on the same prompts and lengths, measured in the same run and interleaved;
time to first token of a request arriving while a full batch is decoding, against the same request on
an idle engine; and adapter activation. PEFT's own mixed-adapter batch (``generate(adapter_names=...)``
with the same first 8 adapters) is measured beside, as the library a user would otherwise pick. A sampled
row (temperature 1, top-p 0.9, 8 distinct adapters) is measured against plain ``generate`` sampling the same
way, since most requests sample (OpenAI's default temperature is 1). Each
ratio (of medians) comes with the range of its per-repetition ratios, each repetition against the plain
``generate`` measured just before it, which shows how far one run swings on a noisy machine.
``--dtype`` sets the dtype of the engine's base and slots and of the plain and PEFT baselines alike;
with a dtype other than float32, plain ``generate`` in float32 (what a user gets by default) is measured
beside as one more row. The engine's base has its linear weights reordered for oneDNN where the server
would (``T2L_PACKED_WEIGHTS``, ``hypernet.packed_linear``); plain ``generate`` with the same reordered
weights is then one more row, which separates the kernels' gain from the engine's own cost. Targets
(issue 13), 2-core CPU: ≥ 0.97x the same-dtype base with 8 and 16 distinct adapters at batch 8 and 16,
the engine without adapters ≥ 1.00x; busy TTFT ≤ 1.25x idle.

    python -m bench.engine [--tokens 32] [--reps 3] [--dtype float32] [--json OUT]
"""

import argparse
import asyncio
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from bench.stats import summary, write_json
from hypernet.adapter import LoraAdapter
from hypernet.attention import use_packed_decode_attention
from hypernet.base import load_base
from hypernet.chat import chat_ids
from hypernet.checkpoint import default_checkpoint
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers, products_dtype
from hypernet.packed_linear import pack_linears
from server.engine import Delta, Engine, Finished, Job, Sampling
from server.settings import ServerSettings
from server.slots import EMPTY, SlotBank
from server.threads import on_own_thread

SAMPLED = {"do_sample": True, "temperature": 1.0, "top_p": 0.9}  # plain generate's sampling row
PROMPTS = [f"Write a short note about topic number {i}: what it is and why it matters." for i in range(16)]


def bench_adapters(generator: AdapterGenerator, n: int) -> list[LoraAdapter]:
    """``n`` distinct adapters, the same in every run. The heads get some noise first: an untrained
    checkpoint's give B = 0, and real adapters have weight."""
    torch.manual_seed(0)
    with torch.no_grad():
        for head in generator.model.heads.values():
            head.weight.normal_(std=0.002)
    adapters, _ = generator.generate([f"Task {i}: answer questions of kind {i}." for i in range(n)])
    return adapters


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    """The first ``n`` benchmark prompts as chat-template token ids."""
    messages = [[{"role": "user", "content": p}] for p in PROMPTS[:n]]
    return [chat_ids(tokenizer, m, generation_prompt=True) for m in messages]


async def run_jobs(
    engine: Engine, prompts: list[list[int]], slots: list[int], tokens: int, **sampling: float
) -> tuple[float, int]:
    """Submit all at once; seconds until every job finished, and tokens generated. Greedy unless
    ``sampling`` gives a temperature (and top_p)."""
    loop = asyncio.get_running_loop()
    settings = {"temperature": 0.0} | sampling
    jobs = [
        Job(p, s, Sampling(tokens, ignore_eos=True, seed=i, **settings), loop)
        for i, (p, s) in enumerate(zip(prompts, slots, strict=True))
    ]
    start = time.perf_counter()
    for job in jobs:
        engine.submit(job)
    generated = 0
    for job in jobs:
        while not isinstance(event := await job.events.get(), Finished):
            pass
        generated += event.completion_tokens
    return time.perf_counter() - start, generated


async def ttft(engine: Engine, prompt: list[int], slot: int) -> float:
    job = Job(prompt, slot, Sampling(4, temperature=0, ignore_eos=True), asyncio.get_running_loop())
    start = time.perf_counter()
    engine.submit(job)
    first = None
    while not isinstance(event := await job.events.get(), Finished):
        if isinstance(event, Delta) and first is None:
            first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start


def base_generate(model, tokenizer, prompts: list[list[int]], tokens: int, **extra) -> tuple[float, int]:
    """``generate`` of exactly ``tokens`` per row, left-padded, greedy unless ``extra`` (passed to
    ``generate``) samples; PEFT's mixed-adapter batch passes ``adapter_names``, one per row."""
    longest = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=pad,
            **({"do_sample": False} | extra),
        )
    return time.perf_counter() - start, tokens * len(prompts)


def peft_model(model, adapters: list, folder: Path):
    """The library a user would otherwise pick: PEFT with every adapter loaded under its own name."""
    from peft import PeftModel

    paths = [adapter.save_peft(folder / f"a{i}") for i, adapter in enumerate(adapters)]
    peft = PeftModel.from_pretrained(model, str(paths[0]), adapter_name="a0")
    for i, path in enumerate(paths[1:], start=1):
        peft.load_adapter(str(path), adapter_name=f"a{i}")
    return peft.eval()


def against(tokens_per_s: list[float], base: list[float]) -> dict:
    """Median tokens/s, its ratio to the baseline's median, and the range of the per-repetition ratios
    (each repetition against the baseline measured just before it): how far a single run can swing."""
    paired = [ours / theirs for ours, theirs in zip(tokens_per_s, base, strict=True)]
    median = statistics.median(tokens_per_s)
    return {
        "tokens_per_s": median,
        "ratio": median / statistics.median(base),
        "ratio_range": [min(paired), max(paired)],
    }


@dataclass
class Setup:
    adapters: list[LoraAdapter]
    tokenizer: object
    plain: torch.nn.Module  # the baseline: transformers as it is, no LoRA wrappers
    plain32: torch.nn.Module | None  # float32 beside a lower-precision run
    plain_packed: torch.nn.Module | None  # the baseline with reordered weights, where the engine has them
    peft: torch.nn.Module
    model: torch.nn.Module  # the engine's base, its target linears wrapped by ``layers``
    layers: LoraLayers
    bank: SlotBank
    scaling: float
    device: str

    def engine(self) -> Engine:
        model, tokenizer, layers = self.model, self.tokenizer, self.layers
        return Engine(model, tokenizer, layers, self.bank, self.scaling, max_batch=16, batch_window_ms=5.0)


def setup(args: argparse.Namespace) -> Setup:
    """Models, adapters and slot bank, built on a thread that ends, as the server builds them.

    With torch's OpenMP backend a thread that ran torch and lives on keeps a pool of workers, and while
    two pools live on 2 cores every parallel region of either is slower (``server.threads``). So the
    main thread runs no torch, plain ``generate`` runs on a thread that ends, and each engine measurement
    gets an engine of its own whose thread ends after it: each system runs with only its own pool."""
    settings = ServerSettings()  # the server's settings: T2L_PACKED_WEIGHTS too
    generator = AdapterGenerator.load(settings.checkpoint or default_checkpoint(settings.checkpoints_dir))
    adapters = bench_adapters(generator, 16)
    dtype, device = getattr(torch, args.dtype), settings.torch_device()
    model, tokenizer = load_base(settings.base_model, settings.checkpoints_dir, dtype, device)
    plain = copy.deepcopy(model)
    plain32 = (
        None
        if dtype == torch.float32
        else load_base(settings.base_model, settings.checkpoints_dir, torch.float32, device)[0]
    )
    with tempfile.TemporaryDirectory() as tmp:
        peft = peft_model(copy.deepcopy(model), adapters[:8], Path(tmp))
    plain_packed = None
    if settings.packed_weights and pack_linears(model):
        plain_packed = copy.deepcopy(plain)
        pack_linears(plain_packed)
    use_packed_decode_attention(model)  # as the server's
    rank = generator.config.hypernet.rank
    lora_dtype = products_dtype(dtype, device)  # as the server's
    bank = SlotBank(generator.config.base, rank, slots=16, device=device, dtype=lora_dtype)
    layers = LoraLayers(model, generator.config.base, lora_dtype)
    scaling = generator.config.hypernet.scaling
    return Setup(
        adapters, tokenizer, plain, plain32, plain_packed, peft, model, layers, bank, scaling, device
    )


async def measure(args: argparse.Namespace) -> dict:
    kit = await on_own_thread(setup, args)
    tokenizer, plain, plain32, peft, bank = kit.tokenizer, kit.plain, kit.plain32, kit.peft, kit.bank
    plain_packed = kit.plain_packed
    slots = [await bank.acquire(f"a{i}", a) for i, a in enumerate(kit.adapters)]
    prompts = chat_prompts(tokenizer, 16)

    def generate(model, batch: int, tokens: int, names: list[str] | None = None, **extra):
        if names:
            extra["adapter_names"] = names
        return on_own_thread(partial(base_generate, model, tokenizer, prompts[:batch], tokens, **extra))

    async def decode(batch: int, rows: list[int], tokens: int, **sampling: float) -> tuple[float, int]:
        engine = kit.engine()
        engine.start()
        try:
            return await run_jobs(engine, prompts[:batch], rows, tokens, **sampling)
        finally:
            engine.stop()

    result: dict = {
        "throughput": {},
        "setup": {
            "tokens": args.tokens,
            "reps": args.reps,
            "threads": torch.get_num_threads(),
            "dtype": args.dtype,
            "device": kit.device,
            "packed_weights": plain_packed is not None,
        },
    }
    await decode(8, slots[:8], 4)  # warm up both paths
    await generate(plain, 8, 4)
    if plain_packed is not None:
        await generate(plain_packed, 8, 4)
    await generate(peft, 8, 4, [f"a{i}" for i in range(8)])
    for batch in args.batches:
        base_tps, peft_tps, base32_tps, packed_tps, bare = [], [], [], [], []
        sampled_base, sampled_ours = [], []
        ours: dict[int, list[float]] = {k: [] for k in (1, 4, 8, 16)}
        for _ in range(args.reps):
            seconds, count = await generate(plain, batch, args.tokens)
            base_tps.append(count / seconds)
            if plain32 is not None:
                seconds, count = await generate(plain32, batch, args.tokens)
                base32_tps.append(count / seconds)
            if plain_packed is not None:
                seconds, count = await generate(plain_packed, batch, args.tokens)
                packed_tps.append(count / seconds)
            names = [f"a{i % 8}" for i in range(batch)]
            seconds, count = await generate(peft, batch, args.tokens, names)
            peft_tps.append(count / seconds)
            for k in ours:
                seconds, count = await decode(batch, [slots[i % k] for i in range(batch)], args.tokens)
                ours[k].append(count / seconds)
            # diagnostic: the engine with no adapter on any row (so no LoRA product): its own overhead
            seconds, count = await decode(batch, [EMPTY] * batch, args.tokens)
            bare.append(count / seconds)
            # what most requests ask for: sampling (OpenAI's default temperature 1, with top-p 0.9)
            seconds, count = await generate(plain, batch, args.tokens, **SAMPLED)
            sampled_base.append(count / seconds)
            rows = [slots[i % 8] for i in range(batch)]
            seconds, count = await decode(batch, rows, args.tokens, temperature=1.0, top_p=0.9)
            sampled_ours.append(count / seconds)
        result["throughput"][f"batch{batch}"] = {
            "base_tokens_per_s": statistics.median(base_tps),
            **({"plain_float32": against(base32_tps, base_tps)} if base32_tps else {}),
            **({"plain_packed_weights": against(packed_tps, base_tps)} if packed_tps else {}),
            "engine_without_lora": against(bare, base_tps),
            "peft_mixed_8_adapters": against(peft_tps, base_tps),
            **{f"{k}_adapters": against(v, base_tps) for k, v in ours.items()},
            "sampled_base_tokens_per_s": statistics.median(sampled_base),
            "sampled_8_adapters": against(sampled_ours, sampled_base),
        }

    engine = kit.engine()
    engine.start()
    idle, busy = [], []
    for i in range(args.reps * 3):
        idle.append(await ttft(engine, prompts[i % 16], slots[i % 16]))
        loop = asyncio.get_running_loop()
        load = [
            Job(p, slot, Sampling(args.tokens * 4, temperature=0, ignore_eos=True), loop)
            for p, slot in zip(prompts[:7], slots[:7], strict=True)
        ]
        for job in load:
            engine.submit(job)
        for job in load:  # wait until the batch is past its prefill and decoding
            while not isinstance(await job.events.get(), Delta):
                pass
        busy.append(await ttft(engine, prompts[(i + 8) % 16], slots[(i + 8) % 16]))
        for job in load:
            job.cancelled.set()
        await asyncio.sleep(0.2)
    result["ttft_ms"] = {"idle": summary([t * 1000 for t in idle]), "busy": summary([t * 1000 for t in busy])}
    result["ttft_ms"]["ratio_p50"] = result["ttft_ms"]["busy"]["p50"] / result["ttft_ms"]["idle"]["p50"]
    result["activation_ms"] = summary(bank.activations_ms)
    engine.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per sequence")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[8, 16],
        choices=range(1, 17),
        metavar="{1..16}",
        help="batch sizes to measure (default 8 16)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(f"{'decode throughput (' + args.dtype + ')':<36}{'tokens/s':>10}{'x base':>9}  per-rep range")
    for batch, row in result["throughput"].items():
        print(f"{batch + ': plain transformers':<36}{row['base_tokens_per_s']:>10.1f}{1:>9.2f}")
        named = [("plain_float32", "plain, float32"), ("plain_packed_weights", "plain, reordered weights")]
        named += [("engine_without_lora", "engine, no adapters")]
        named += [("peft_mixed_8_adapters", "PEFT mixed batch, 8")]
        named += [(f"{k}_adapters", f"{k:>2} distinct adapters") for k in (1, 4, 8, 16)]
        for key, name in named:
            if key in row:
                r, (lo, hi) = row[key], row[key]["ratio_range"]
                label = f"{batch}: {name}"
                print(f"{label:<36}{r['tokens_per_s']:>10.1f}{r['ratio']:>9.2f}  {lo:.2f}-{hi:.2f}")
        r, (lo, hi) = row["sampled_8_adapters"], row["sampled_8_adapters"]["ratio_range"]
        label, tokens_per_s = f"{batch}: plain, sampled T=1 top-p 0.9", row["sampled_base_tokens_per_s"]
        print(f"{label:<36}{tokens_per_s:>10.1f}{1:>9.2f}")
        label = f"{batch}:  8 adapters, sampled"
        print(f"{label:<36}{r['tokens_per_s']:>10.1f}{r['ratio']:>9.2f}  {lo:.2f}-{hi:.2f}")
    t = result["ttft_ms"]
    idle, busy = t["idle"], t["busy"]
    print(f"TTFT idle p50 {idle['p50']:.1f} ms (p95 {idle['p95']:.1f}); busy p50 {busy['p50']:.1f} ms")
    print(f"  (p95 {busy['p95']:.1f}); busy/idle {t['ratio_p50']:.2f}")
    print(f"activation p50 {result['activation_ms']['p50']:.3f} ms")
    for batch, row in result["throughput"].items():
        checks = [(f"{k} adapters", row[f"{k}_adapters"], 0.97) for k in (8, 16)]
        checks.append(("engine without adapters", row["engine_without_lora"], 1.0))
        for name, r, bar in checks:
            verdict = "met" if r["ratio"] >= bar else "MISSED"
            lo, hi = r["ratio_range"]
            print(
                f"target: {name} at {batch} >= {bar:.2f}x base: {verdict} "
                f"({r['ratio']:.2f}; per repetition {lo:.2f}-{hi:.2f})"
            )
    verdict = "met" if t["ratio_p50"] <= 1.25 else "MISSED"
    print(f"target: busy TTFT <= 1.25x idle: {verdict} ({t['ratio_p50']:.2f})")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
