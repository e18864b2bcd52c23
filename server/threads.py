"""Where the server's torch work runs besides the engine's thread, and at what priority.

With torch's OpenMP backend (libgomp), each thread that runs a parallel torch op keeps a pool of OpenMP
workers for as long as the thread lives. Once more workers are alive than there are cores, libgomp
stops spinning between parallel regions (its throttled spin count) and every region of the engine's
forward pass pays for waking its workers. On our 2 cores one idle pool on another thread (the loader, the
generation thread, the event loop's) made a 49-token prefill about 1.3x slower and the low-rank products
in it 4-6x dearer (README, Benchmarks). So only the engine's thread keeps a pool:

* ``on_own_thread``: rare, heavy work (loading models, converting downloads) on a thread that ends when
  the work does, and its pool with it.
* ``SerialThread``: the request path's work (generating adapters, serialising them for Redis) on one
  long-lived thread where torch runs every op serially (its OpenMP thread count is 1 there, so it never
  gets a pool). Starting a thread per adapter cost a busy server 3 ms before the work began, with the
  event loop blocked in ``Thread.start`` meanwhile (waiting for a core and the GIL).
* ``lower_priority``: the engine's thread (and the OpenMP workers it starts) decodes at a higher nice
  value, so a newcomer's adapter generation and the event loop take the cores first when they need them.
  While 7 streams decoded, generating an adapter took 21 ms against 12 idle; with both changes 11 against 7
  (a throwaway probe; README, Benchmarks, fourteenth session).
"""

import asyncio
import ctypes
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")
log = logging.getLogger("t2l.threads")
OPENMP_RUNTIME = re.compile(r"/lib(gomp|iomp5|omp)[\w.-]*\.so[\w.]*$")  # GNU, Intel, LLVM


async def on_own_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on a new thread that ends when it returns."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # the awaiting task may have been cancelled meanwhile
            outcome()

    def target() -> None:
        try:
            outcome = partial(future.set_result, fn(*args))
        except BaseException as err:  # handed to the awaiting task, which raises it
            outcome = partial(future.set_exception, err)
        with suppress(RuntimeError):  # the event loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=target, name="t2l-torch", daemon=True).start()
    return await future


def _openmp_runtimes() -> list[ctypes.CDLL]:
    """The OpenMP runtimes loaded into this process (Linux: found in /proc/self/maps); opening one by its
    path gives the library already loaded, not a second copy."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return [
        ctypes.CDLL(path)
        for path in sorted({line.split()[-1] for line in maps.splitlines() if OPENMP_RUNTIME.search(line)})
    ]


def serial_torch() -> bool:
    """Make torch run every op on the calling thread serially, other threads unchanged; False where it
    cannot (then this thread may start an OpenMP pool of its own). ``torch.set_num_threads`` would change
    every thread; OpenMP's ``omp_set_num_threads`` sets the calling thread's count only."""
    torch.get_num_threads()  # ATen sets a thread's OpenMP count lazily, at its first use: now, not after ours
    for runtime in _openmp_runtimes():
        runtime.omp_set_num_threads(1)
    return torch.get_num_threads() == 1


class SerialThread:
    """Calls run one at a time, in order, on one long-lived thread where torch runs serially: calls
    never overlap (even when an awaiting caller was cancelled), and the thread never holds an OpenMP pool."""

    def __init__(self, name: str):
        self.name = name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=self._serial)

    def _serial(self) -> None:
        if not serial_torch():
            log.warning("%s: torch may run parallel ops here (no OpenMP runtime found to limit)", self.name)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Let the thread end once the call in progress (if any) returns; queued calls are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def lower_priority(increment: int) -> int | None:
    """Raise the calling thread's nice value by ``increment`` (capped at 19); threads it starts later
    inherit it. Linux only, where the nice value is per thread (elsewhere it would be the whole
    process's): returns the new value, or None where nothing changed."""
    if increment <= 0 or sys.platform != "linux":
        return None
    tid = threading.get_native_id()
    nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as err:  # raising one's own nice value needs no privilege; a sandbox may refuse it
        log.warning("could not lower the engine thread's priority: %s", err)
        return None
    return nice
