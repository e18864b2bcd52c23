"""Torch work on a thread that ends: results, errors, serialisation, and the OpenMP pool let go."""

import asyncio
import os
import threading
import time

import pytest
import torch

from server.threads import on_own_thread
from tests.conftest import thread_count


def test_returns_the_result_and_raises_the_error_in_the_awaiting_task():
    async def run() -> None:
        assert await on_own_thread(lambda a, b: a + b, 2, 3) == 5
        assert await on_own_thread(threading.current_thread) is not threading.current_thread()
        with pytest.raises(ValueError, match="bad description"):
            await on_own_thread(lambda: (_ for _ in ()).throw(ValueError("bad description")))

    asyncio.run(run())


def test_calls_sharing_a_lock_never_overlap_even_when_their_caller_is_cancelled():
    lock, inside, overlaps = threading.Lock(), [0], []

    def work() -> None:
        inside[0] += 1
        overlaps.append(inside[0])
        time.sleep(0.05)
        inside[0] -= 1

    async def run() -> None:
        first = asyncio.create_task(on_own_thread(work, lock=lock))
        await asyncio.sleep(0.01)
        first.cancel()  # the thread goes on; the next call must still wait for it
        await asyncio.gather(*(on_own_thread(work, lock=lock) for _ in range(3)))

    asyncio.run(run())
    assert overlaps == [1, 1, 1, 1]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_the_thread_and_its_openmp_pool_end_with_the_work():
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP pool to let go")

    def parallel_op() -> float:
        x = torch.randn(512, 512)
        return float((x @ x).sum())  # a parallel region: this thread gets OpenMP workers

    async def run() -> int:
        await on_own_thread(parallel_op)
        await asyncio.sleep(0.05)
        return thread_count()

    parallel_op()  # torch's own lazily started threads (and this thread's pool) exist from here on
    before = thread_count()
    assert asyncio.run(run()) == before
