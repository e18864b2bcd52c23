"""Torch work off the engine's thread: on a thread that ends (its OpenMP pool let go) or on one long-lived
serial thread (never a pool), and a thread's priority lowered."""

import asyncio
import os
import sys
import threading
import time

import pytest
import torch

from server.threads import SerialThread, lower_priority, on_own_thread
from tests.conftest import nice_of, settled_thread_count, thread_count


def test_returns_the_result_and_raises_the_error_in_the_awaiting_task():
    async def run() -> None:
        assert await on_own_thread(lambda a, b: a + b, 2, 3) == 5
        assert await on_own_thread(threading.current_thread) is not threading.current_thread()
        with pytest.raises(ValueError, match="bad description"):
            await on_own_thread(lambda: (_ for _ in ()).throw(ValueError("bad description")))

    asyncio.run(run())


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_the_thread_and_its_openmp_pool_end_with_the_work():
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP pool to let go")

    def parallel_op() -> float:
        x = torch.randn(512, 512)
        return float((x @ x).sum())  # a parallel region: this thread gets OpenMP workers

    async def run() -> None:
        await on_own_thread(parallel_op)

    parallel_op()  # torch's own lazily started threads (and this thread's pool) exist from here on
    before = settled_thread_count()
    asyncio.run(run())
    assert settled_thread_count() == before


def test_a_serial_thread_runs_calls_in_order_one_at_a_time_and_raises_their_errors():
    worker, inside, overlaps, order = SerialThread("t2l-test"), [0], [], []

    def work(i: int) -> int:
        inside[0] += 1
        overlaps.append(inside[0])
        time.sleep(0.02)
        order.append(i)
        inside[0] -= 1
        return i

    async def run() -> list[int]:
        first = asyncio.create_task(worker.run(work, 0))
        await asyncio.sleep(0.005)
        first.cancel()  # the call goes on; the next ones must still wait for it
        results = await asyncio.gather(*(worker.run(work, i) for i in range(1, 4)))
        with pytest.raises(ValueError, match="bad description"):
            await worker.run(lambda: (_ for _ in ()).throw(ValueError("bad description")))
        return results

    try:
        assert asyncio.run(run()) == [1, 2, 3]
    finally:
        worker.close()
    assert overlaps == [1, 1, 1, 1] and order == [0, 1, 2, 3]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_a_serial_thread_runs_torch_serially_and_never_holds_an_openmp_pool():
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP pool to start")

    def parallel_op() -> int:
        x = torch.randn(512, 512)
        float((x @ x).sum())  # a parallel region elsewhere: OpenMP workers would start for this thread
        return torch.get_num_threads()

    async def run(worker: SerialThread) -> tuple[int, int]:
        threads_here = await worker.run(parallel_op)
        return threads_here, thread_count()

    parallel_op()  # torch's lazily started threads (and this thread's pool) exist from here on
    before, threads = settled_thread_count(), torch.get_num_threads()
    worker = SerialThread("t2l-test")
    try:
        threads_there, during = asyncio.run(run(worker))
    finally:
        worker.close()
    assert threads_there == 1 and torch.get_num_threads() == threads  # that thread only
    assert during == before + 1  # the worker itself, no OpenMP workers beside it


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_lower_priority_changes_the_calling_thread_and_the_threads_it_starts_only():
    seen: dict[str, int] = {}

    def lowered() -> None:
        seen["returned"] = lower_priority(3)
        seen["self"] = nice_of(threading.get_native_id())
        child = threading.Thread(target=lambda: seen.setdefault("child", nice_of(threading.get_native_id())))
        child.start()
        child.join()

    base = nice_of(threading.get_native_id())
    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    expected = min(19, base + 3)
    assert seen == {"returned": expected, "self": expected, "child": expected}
    assert nice_of(threading.get_native_id()) == base
    assert lower_priority(0) is None
