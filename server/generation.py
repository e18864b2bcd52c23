"""The engine boundary the chat API talks to: submit a chat, read its events, close it.

Two backends implement it: ``LocalBackend`` (our continuous-batching engine and slot bank, in this
process) and ``server.vllm.VLLMBackend`` (vLLM servers that load our adapters at run time). Either way
a generation is a queue of ``Delta`` events ended by one ``Finished``; the API formats both the same.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from server.engine import Engine, Job, QueueFull, Sampling
from server.errors import APIError
from server.slots import EMPTY, SlotBank
from server.store import Record


@dataclass
class ChatInput:
    messages: list[dict[str, str]]  # role and text of each message, chat template not applied
    prompt: list[int]  # the same messages through the base's chat template
    record: Record | None  # the adapter, or None for the base model
    sampling: Sampling
    arrived: float = field(default_factory=time.monotonic)  # when the request came in (monotonic)


class Generation(Protocol):
    events: asyncio.Queue  # Delta ... Finished

    async def close(self) -> None:
        """Stop generating (if still running) and free what the generation holds; idempotent."""


class Backend(Protocol):
    async def submit(self, chat: ChatInput) -> Generation:
        """Start generating; raises ``APIError`` when it cannot start (busy, engine down, bad request)."""

    async def forget(self, adapter_id: str) -> None:
        """A deleted adapter leaves the engine's memory."""

    async def stop(self) -> None: ...


class LocalGeneration:
    def __init__(self, job: Job, slot: int, bank: SlotBank):
        self.job, self.slot, self.bank = job, slot, bank
        self.events = job.events
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.job.cancelled.set()
        await self.bank.release(self.slot)


class LocalBackend:
    """Our engine: the request's adapter is pinned in a slot of the resident model while it runs."""

    def __init__(self, engine: Engine, bank: SlotBank):
        self.engine, self.bank = engine, bank

    async def submit(self, chat: ChatInput) -> LocalGeneration:
        record = chat.record
        if record and record.adapter.rank > self.bank.rank:
            raise APIError(
                422,
                f"adapter {record.id} has rank {record.adapter.rank}; this server's slots hold rank "
                f"{self.bank.rank} (T2L_SLOT_RANK): download it, or blend in embedding mode",
                "model",
                "rank_too_large",
            )
        slot = await self.bank.acquire(record.id, record.adapter) if record else EMPTY
        job = Job(chat.prompt, slot, chat.sampling, asyncio.get_running_loop(), arrived=chat.arrived)
        try:
            self.engine.submit(job)
        except QueueFull as err:
            await self.bank.release(slot)
            raise APIError(
                429,
                "the server is busy: too many queued requests",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from err
        return LocalGeneration(job, slot, self.bank)

    async def forget(self, adapter_id: str) -> None:
        self.bank.evict(adapter_id)

    async def stop(self) -> None:
        await asyncio.to_thread(self.engine.stop)
