"""A request that arrives during a decode step is prefilled between two of its layers, not after it."""

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from hypernet.base import load_base, spec_from_config
from hypernet.lora import LoraLayers
from server import engine as engine_module
from server.engine import Batch, Engine, Finished, Job, RowState, Sampling
from server.slots import EMPTY, SlotBank
from tests.conftest import CHECKPOINTS, TARGETS, nice_of


@pytest.fixture
def engine(tiny_chat_base):
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    spec = spec_from_config(str(tiny_chat_base), TARGETS, CHECKPOINTS)
    bank = SlotBank(spec, rank=4, slots=2)
    gen = torch.Generator().manual_seed(0)
    for tensors in (bank.A, bank.Bt):  # two random adapters in slots 1 and 2
        for t in tensors.values():
            t[1:] = torch.randn(t[1:].shape, generator=gen) * 0.5
    engine = Engine(model, tokenizer, LoraLayers(model, spec), bank, scaling=2.0, batch_window_ms=0)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture
def log(monkeypatch) -> list[tuple[int, int]]:
    """(job id, token) in the order rows take their tokens; each job's own in ``job.pushed``."""
    taken: list[tuple[int, int]] = []
    push = RowState.push

    def recording_push(row: RowState, token: int) -> None:
        taken.append((id(row.job), token))
        row.job.pushed.append(token)
        push(row, token)

    monkeypatch.setattr(RowState, "push", recording_push)
    return taken


async def tokens_of(job: Job) -> list[int]:
    while not isinstance(event := await job.events.get(), Finished):
        pass
    assert event.reason == "length", event
    return job.pushed


def job(prompt: list[int], slot: int, tokens: int) -> Job:
    made = Job(prompt, slot, Sampling(tokens, temperature=0, ignore_eos=True), asyncio.get_running_loop())
    made.pushed = []
    return made


@contextmanager
def on_layer0(engine: Engine, hook) -> Iterator[None]:
    """``hook`` as a forward pre-hook on the engine model's first decoder layer, while in the block."""
    handle = engine.model.get_decoder().layers[0].register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("slots", [(1, 2), (EMPTY, 1), (2, EMPTY)])
def test_a_newcomer_mid_step_gets_its_first_token_before_the_step_ends(engine, log, slots):
    """The newcomer is submitted from inside the running row's 4th decode step (a pre-hook on layer 0,
    after the engine's own); it must be prefilled within that step (its first token pushed before the
    running row's 5th) and both rows must get exactly the greedy tokens they get alone."""
    running_prompt, newcomer_prompt = [1, 400, 401, 402, 403, 404], [1, 500, 501]

    async def alone() -> list[list[int]]:
        return [
            await tokens_of(_submitted(engine, job(running_prompt, slots[0], 12))),
            await tokens_of(_submitted(engine, job(newcomer_prompt, slots[1], 6))),
        ]

    async def together() -> tuple[Job, Job, list[list[int]]]:
        running, newcomer = job(running_prompt, slots[0], 12), job(newcomer_prompt, slots[1], 6)
        steps = 0

        def submit_during_the_fourth_step(module, args) -> None:
            nonlocal steps
            if args[0].shape[1] == 1 and engine._stepping is not None:  # a decode step's layer 0
                steps += 1
                if steps == 4:
                    engine.submit(newcomer)

        with on_layer0(engine, submit_during_the_fourth_step):
            engine.submit(running)
            results = [await tokens_of(running), await tokens_of(newcomer)]
        return running, newcomer, results

    expected = asyncio.run(alone())
    log.clear()
    before = engine.metrics.mid_step_prefills._value.get()
    running, newcomer, results = asyncio.run(together())
    assert results == expected
    assert engine.metrics.mid_step_prefills._value.get() == before + 1
    order = [owner for owner, _ in log]
    first_of_newcomer = order.index(id(newcomer))
    # the running row had its prefill token and 3 decode tokens; the 4th step's token came after
    assert order[:first_of_newcomer] == [id(running)] * 4


def _submitted(engine: Engine, made: Job) -> Job:
    engine.submit(made)
    return made


def test_the_batch_window_counts_from_the_requests_arrival(tiny_chat_base, monkeypatch):
    """An idle engine waits the window for company from when a request arrived: one that spent the
    window making its adapter (arrived a window ago) is prefilled at once; a fresh one waits. Stopping
    the idle engine ends its thread cleanly."""
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    spec = spec_from_config(str(tiny_chat_base), TARGETS, CHECKPOINTS)
    window_s = 1.0
    engine = Engine(
        model, tokenizer, LoraLayers(model, spec), SlotBank(spec, rank=4, slots=1), 2.0, batch_window_ms=1000
    )
    engine.start()

    async def first_token_s(arrived_ago: float) -> float:
        made = job([1, 400, 401], EMPTY, 1)
        made.arrived -= arrived_ago
        start = time.monotonic()
        engine.submit(made)
        await tokens_of(made)
        return time.monotonic() - start

    try:
        assert asyncio.run(first_token_s(window_s)) < 0.8 * window_s
        assert asyncio.run(first_token_s(0.0)) >= 0.95 * window_s
    finally:
        engine.stop()
    assert not engine._thread.is_alive() and crashes == []


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_the_engine_decodes_at_its_nice_value_and_the_caller_keeps_its_own(tiny_chat_base):
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    spec = spec_from_config(str(tiny_chat_base), TARGETS, CHECKPOINTS)
    bank = SlotBank(spec, rank=4, slots=1)
    engine = Engine(model, tokenizer, LoraLayers(model, spec), bank, 2.0, batch_window_ms=0, nice=4)
    base = nice_of(threading.get_native_id())
    engine.start()

    async def decode() -> None:
        made = job([1, 400, 401], EMPTY, 3)
        engine.submit(made)
        await tokens_of(made)

    try:
        asyncio.run(decode())
        assert nice_of(engine._thread.native_id) == min(19, base + 4)
    finally:
        engine.stop()
    assert nice_of(threading.get_native_id()) == base


def test_a_newcomer_arriving_while_finished_rows_leave_is_prefilled_before_the_next_step(
    engine, log, monkeypatch
):
    """A row finishes and leaves the batch at the end of its step (``Batch.keep``); a newcomer submitted
    meanwhile is prefilled before the next step, with no gather of the remaining rows' slots in between
    (the batch is gathered once, with the newcomer), its first token before the remaining row's next,
    and every row gets the greedy tokens it gets alone."""
    prompts = {"long": [1, 400, 401, 402], "short": [1, 410, 411], "new": [1, 500, 501]}

    async def alone() -> list[list[int]]:
        return [
            await tokens_of(_submitted(engine, job(prompts["long"], 1, 10))),
            await tokens_of(_submitted(engine, job(prompts["short"], EMPTY, 3))),
            await tokens_of(_submitted(engine, job(prompts["new"], 2, 4))),
        ]

    expected = asyncio.run(alone())
    log.clear()
    jobs: dict[str, Job] = {}
    keep, gather = Batch.keep, engine.bank.gather
    # the slots gathered from when the short row leaves to the new row's prefill
    between: list[list[int]] | None = None

    def keep_and_submit(batch: Batch, indices: list[int]) -> None:
        nonlocal between
        keep(batch, indices)
        if between is None and len(jobs["short"].pushed) == 3:
            between = []
            engine.submit(jobs["new"])  # as if it arrived while the finished row left

    def recording_gather(slots: list[int]):
        if between is not None and not jobs["new"].pushed:
            between.append(list(slots))
        return gather(slots)

    monkeypatch.setattr(Batch, "keep", keep_and_submit)
    monkeypatch.setattr(engine.bank, "gather", recording_gather)

    async def together() -> list[list[int]]:
        jobs.update(long=job(prompts["long"], 1, 10), short=job(prompts["short"], EMPTY, 3))
        jobs["new"] = job(prompts["new"], 2, 4)
        engine.submit(jobs["long"])
        engine.submit(jobs["short"])
        return [await tokens_of(jobs[name]) for name in ("long", "short", "new")]

    assert asyncio.run(together()) == expected
    assert between == [[2]]  # the newcomer's own slot for its prefill, nothing before it
    order = [owner for owner, _ in log]
    long, short, new = (id(jobs[name]) for name in ("long", "short", "new"))
    first_of_new = order.index(new)
    assert order[:first_of_new].count(short) == 3  # it came after the short row's last token ...
    assert order[:first_of_new].count(long) == 3  # ... and before the long row's next one


def test_a_long_prompt_is_prefilled_in_chunks_between_the_running_rows_steps(engine, log):
    """With ``prefill_chunk`` = 4, a 23-token prompt goes in as 6 chunks, one between two decode steps:
    the running row takes a token after each of the first five (it would wait for the whole prompt
    otherwise), a short prompt arriving with it is prefilled whole and gets its first token first, and
    every row gets exactly the greedy tokens it gets alone with whole prefills."""
    prompts = {"running": [1, 400, 401, 402], "long": [1, *range(600, 622)], "short": [1, 500, 501]}
    slots = {"running": 1, "long": 2, "short": EMPTY}
    counts = {"running": 16, "long": 5, "short": 3}

    def made(name: str) -> Job:
        return job(prompts[name], slots[name], counts[name])

    async def alone() -> list[list[int]]:
        return [await tokens_of(_submitted(engine, made(name))) for name in prompts]

    expected = asyncio.run(alone())
    engine.prefill_chunk = 4
    log.clear()
    jobs: dict[str, Job] = {}
    steps = 0

    def submit_during_the_second_step(module, args) -> None:
        nonlocal steps
        if args[0].shape[1] == 1 and engine._stepping is not None:  # a decode step's layer 0
            steps += 1
            if steps == 2:
                engine.submit(jobs["long"])
                engine.submit(jobs["short"])

    async def together() -> list[list[int]]:
        jobs.update({name: made(name) for name in prompts})
        engine.submit(jobs["running"])
        return [await tokens_of(jobs[name]) for name in prompts]

    before = engine.metrics.prefill_chunks._value.get()
    with on_layer0(engine, submit_during_the_second_step):
        assert asyncio.run(together()) == expected
    assert engine.metrics.prefill_chunks._value.get() == before + 6
    order = [owner for owner, _ in log]
    running, long, short = (id(jobs[name]) for name in ("running", "long", "short"))
    first_of_long = order.index(long)
    assert order.index(short) < first_of_long
    # the prefill token, 1 decode token, the second step's, then one after each of 5 chunks
    assert order[:first_of_long].count(running) == 3 + 5


def test_an_abandoned_long_prompt_stops_being_prefilled(engine, log):
    """A request abandoned after its prompt's second chunk gets no third; the engine then serves the
    next request as usual and counts nothing as running."""
    engine.prefill_chunk = 4
    abandoned: Job | None = None
    chunks = 0

    def cancel_after_the_second_chunk(module, args) -> None:
        nonlocal chunks
        if args[0].shape[1] == 4:  # a chunk of the long prompt at layer 0
            chunks += 1
            if chunks == 2:
                abandoned.cancelled.set()

    async def serve() -> list[int]:
        nonlocal abandoned
        abandoned = job([1, *range(600, 622)], 1, 4)
        engine.submit(abandoned)
        return await tokens_of(_submitted(engine, job([1, 500, 501], 2, 3)))

    before = engine.metrics.prefill_chunks._value.get()
    with on_layer0(engine, cancel_after_the_second_chunk):
        assert len(asyncio.run(serve())) == 3
    deadline = time.monotonic() + 5
    while engine.metrics.running._value.get() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.metrics.running._value.get() == 0
    assert engine.metrics.prefill_chunks._value.get() == before + 2
    assert abandoned.pushed == [] and engine._chunked == []


def test_a_failing_chunk_fails_its_request_only(engine, log):
    """A long prompt whose third chunk raises ends with an error; the row decoding beside it gets every
    greedy token it gets alone, and the engine serves the next request."""
    running_prompt, long_prompt = [1, 400, 401, 402], [1, *range(600, 622)]

    async def alone() -> list[int]:
        return await tokens_of(_submitted(engine, job(running_prompt, 1, 16)))

    expected = asyncio.run(alone())
    engine.prefill_chunk = 4
    chunks = 0

    def fail_the_third_chunk(module, args) -> None:
        nonlocal chunks
        if args[0].shape[1] == 4:  # a chunk of the long prompt at layer 0
            chunks += 1
            if chunks == 3:
                raise RuntimeError("out of memory, say")

    async def together() -> tuple[list[int], Finished, list[int]]:
        running, long = job(running_prompt, 1, 16), job(long_prompt, 2, 4)
        engine.submit(running)
        engine.submit(long)
        while not isinstance(failed := await long.events.get(), Finished):
            pass
        tokens = await tokens_of(running)
        return tokens, failed, await tokens_of(_submitted(engine, job([1, 500, 501], 2, 3)))

    with on_layer0(engine, fail_the_third_chunk):
        tokens, failed, after = asyncio.run(together())
    assert tokens == expected
    assert failed.reason == "error" and "out of memory, say" in failed.error
    assert len(after) == 3 and engine._chunked == []


def test_a_new_row_at_a_dead_rows_address_gets_its_own_slots(tiny_chat_base, monkeypatch):
    """The LoRA layers are pointed at a batch's slots again only when its rows change. A row that ended
    can leave its memory to a new row with another adapter, so the new row must not pass for the old
    one: here every object has one id, as if the address were reused."""
    monkeypatch.setattr(engine_module, "id", lambda obj: 0, raising=False)
    model, tokenizer = load_base(str(tiny_chat_base), CHECKPOINTS)
    spec = spec_from_config(str(tiny_chat_base), TARGETS, CHECKPOINTS)
    bank = SlotBank(spec, rank=4, slots=2)
    engine = Engine(model, tokenizer, LoraLayers(model, spec), bank, 2.0)
    gathered: list[list[int]] = []
    gather = bank.gather
    monkeypatch.setattr(bank, "gather", lambda slots: gathered.append(list(slots)) or gather(slots))

    async def rows_apply() -> None:
        for slot in (1, 2):
            made = job([1, 400], slot, 1)
            engine._apply([RowState(made, tokenizer, engine.eos, engine.metrics)])

    asyncio.run(rows_apply())
    assert gathered == [[1], [2]]
