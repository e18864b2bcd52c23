"""Torch work off the engine's thread runs on a thread that ends with it.

With torch's OpenMP backend (libgomp), each thread that runs a parallel torch op keeps a pool of OpenMP
workers for as long as the thread lives. Once more workers are alive than there are cores, libgomp
stops spinning between parallel regions (its throttled spin count) and every region of the engine's
forward pass pays for waking its workers. On our 2 cores one idle pool on another thread (the loader, the
generation thread, the event loop's) made a 49-token prefill about 1.3x slower and the low-rank products
in it 4-6x dearer (README, Benchmarks). A thread that ends releases its pool, so the service loads
models, generates adapters and converts downloads each on a thread of its own, and only the engine's
thread keeps one.
"""

import asyncio
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from functools import partial
from typing import TypeVar

T = TypeVar("T")


async def on_own_thread(
    fn: Callable[..., T], *args: object, lock: AbstractContextManager | None = None, name: str = "t2l-torch"
) -> T:
    """``fn(*args)`` on a new thread that ends when it returns; ``lock``, when given, is held around the
    call on that thread (so calls sharing it never overlap, even if an awaiting caller was cancelled)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # the awaiting task may have been cancelled meanwhile
            outcome()

    def target() -> None:
        try:
            with lock if lock is not None else nullcontext():
                outcome = partial(future.set_result, fn(*args))
        except BaseException as err:  # handed to the awaiting task, which raises it
            outcome = partial(future.set_exception, err)
        with suppress(RuntimeError):  # the event loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
