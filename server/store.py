"""Where adapters live: L1 (in-process LRU of ready tensors) → L2 (Redis) → generate.

An adapter's id is a content hash of (normalised description, checkpoint id, base fingerprint), so every
replica names the same adapter the same way. Concurrent requests for one new id generate it once.
Redis holds each adapter as safetensors bytes plus a metadata hash; an entry whose checksum, shapes,
fingerprint or checkpoint do not match is discarded and regenerated, never trusted. A new adapter is
written to Redis behind the request; a chat request holds that write until its first token, so that
sending the adapter to Redis (and Redis appending it to its log) does not compete with its prefill for
the cores. When Redis is down the store keeps serving from L1 and by generating, reports itself
degraded, and writes the adapters it could not store once Redis answers again.
"""

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
import torch
import xxhash
from redis.exceptions import RedisError

from hypernet.adapter import LoraAdapter
from hypernet.blend import Blend
from hypernet.embed import normalize_description
from hypernet.errors import T2LError
from hypernet.generator import AdapterGenerator, Timings
from server.metrics import Metrics
from server.threads import SerialThread

log = logging.getLogger("t2l.store")
WRITE_HOLD_S = 5.0  # the longest a held Redis write waits for its request to release it
KEY = "t2l:adapter:"
INDEX = "t2l:adapters"
INVALIDATE = "t2l:invalidate"  # pub/sub channel: ids deleted on one replica, dropped from every L1
Tier = Literal["l1", "redis"] | None


def checksum(data: bytes) -> str:
    """XXH3-128 of an entry's bytes, prefixed with its name (about 30x faster than SHA-256 here).
    Entries written before it carry a bare SHA-256 hex digest, which ``verify`` still accepts."""
    return "xxh3_128:" + xxhash.xxh3_128_hexdigest(data)


def verify(data: bytes, recorded: str) -> bool:
    if recorded.startswith("xxh3_128:"):
        return checksum(data) == recorded
    return hashlib.sha256(data).hexdigest() == recorded


@dataclass
class Record:
    """A ready adapter and what the API says about it."""

    id: str
    adapter: LoraAdapter
    created: int

    @property
    def nbytes(self) -> int:
        return self.adapter.nbytes


@dataclass
class Lookup:
    record: Record
    cached: Tier
    timings_ms: dict[str, float]
    write_hold: asyncio.Event | None = None  # a generated adapter's held Redis write: set it to go ahead

    def release_write(self) -> None:
        """Let a held Redis write go ahead (idempotent; nothing to do when none is held)."""
        if self.write_hold is not None:
            self.write_hold.set()


class L1Cache:
    """LRU of ready adapters, bounded in count and in bytes."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[str, Record] = OrderedDict()
        self.nbytes = 0

    def get(self, adapter_id: str) -> Record | None:
        record = self._items.get(adapter_id)
        if record is not None:
            self._items.move_to_end(adapter_id)
        return record

    def put(self, record: Record) -> None:
        self.pop(record.id)
        self._items[record.id] = record
        self.nbytes += record.nbytes
        while len(self._items) > self.max_items or (self.nbytes > self.max_bytes and len(self._items) > 1):
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def pop(self, adapter_id: str) -> Record | None:
        record = self._items.pop(adapter_id, None)
        if record is not None:
            self.nbytes -= record.nbytes
        return record

    def records(self) -> list[Record]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


class AdapterStore:
    """The adapter tiers and the single-flight generation behind them."""

    def __init__(
        self,
        generator: AdapterGenerator,
        redis: aioredis.Redis | None,
        l1: L1Cache,
        ttl_s: int | None = None,
        metrics: Metrics | None = None,
        dtype: torch.dtype = torch.float16,
    ):
        self.generator, self.redis, self.l1, self.ttl_s = generator, redis, l1, ttl_s
        # adapters are kept (L1) and stored (Redis) in this dtype from the moment they are made, so every
        # tier serves the same numbers; fp16 halves the bytes of fp32 (downloads convert on request)
        self.dtype = dtype
        self.metrics = metrics or Metrics()
        self.checkpoint_id = generator.config.id
        self.fingerprint = generator.config.base.fingerprint
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # id → (lock, [users])
        self._unsynced: set[str] = set()
        self._writes: set[asyncio.Task] = set()  # Redis writes in flight, awaited by ``flush``
        self._holds: set[asyncio.Event] = set()  # writes held for their requests, released by ``flush``
        self.degraded = False
        self.generations = 0  # how many adapters this process generated (tests count single-flight)
        # generation and serialisation, one at a time (two at work would compete for the same cores), on
        # one thread that keeps no OpenMP pool (``server.threads``)
        self.worker = SerialThread("t2l-generate")
        self.metrics.redis_up.set_function(lambda: 0 if self.degraded or self.redis is None else 1)
        self.metrics.redis_backlog.set_function(lambda: len(self._unsynced))

    def adapter_id(self, spec: str | Blend) -> str:
        """Content hash of the normalised description (or blend), checkpoint id and base fingerprint."""
        if isinstance(spec, Blend) and spec.single is not None:
            spec = spec.single  # a blend of one description is that description
        text = f"blend:{spec.key()}" if isinstance(spec, Blend) else normalize_description(spec)
        key = f"{text}\0{self.checkpoint_id}\0{self.fingerprint}".encode()
        return "t2l-" + hashlib.sha256(key).hexdigest()[:32]

    def _generate(self, spec: str | Blend) -> tuple[LoraAdapter, Timings]:
        """On the worker thread, the cast to the stored dtype included: a torch op on the event loop's
        thread would start an OpenMP team of its own there, beside the engine's."""
        if isinstance(spec, Blend) and spec.single is None:
            adapter, timings = self.generator.generate_blend(spec)
        else:
            (adapter,), timings = self.generator.generate([spec.single if isinstance(spec, Blend) else spec])
        return adapter.to(self.dtype), timings

    # ---- Redis, every call guarded: an outage degrades the store, never fails a request

    async def _redis_call(self, what: str, call):
        if self.redis is None:
            return None
        try:
            result = await call(self.redis)
        except (RedisError, OSError) as err:
            if not self.degraded:
                log.warning("Redis unreachable during %s (%s): serving from L1 and generation", what, err)
            self.degraded = True
            return None
        return result

    async def ping(self) -> bool:
        """Check Redis; on recovery, write what could not be written while it was down."""
        if self.redis is None:
            return False
        try:
            await self.redis.ping()
        except (RedisError, OSError):
            self.degraded = True
            return False
        if self.degraded:
            self.degraded = False
            for adapter_id in list(self._unsynced):
                record = self.l1.get(adapter_id)
                if record is None or await self._write(record):
                    self._unsynced.discard(adapter_id)
            log.info("Redis reachable again")
        return True

    def _write_later(self, record: Record, hold: asyncio.Event | None = None) -> None:
        """Store in Redis without making the request wait, once ``hold`` is set (or ``WRITE_HOLD_S`` has
        passed); ``flush`` releases what is held and awaits what is in flight."""
        if hold is not None:
            self._holds.add(hold)  # now, not when the task starts: a ``flush`` right after must see it
        task = asyncio.create_task(self._write_when(record, hold))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_when(self, record: Record, hold: asyncio.Event | None) -> bool:
        if hold is not None:
            try:
                await asyncio.wait_for(hold.wait(), WRITE_HOLD_S)
            except TimeoutError:
                log.warning("adapter %s: its request did not release its write in time", record.id)
            finally:
                self._holds.discard(hold)
        return await self._write(record)

    async def flush(self) -> None:
        for hold in list(self._holds):
            hold.set()
        if self._writes:
            await asyncio.gather(*self._writes)

    async def close(self) -> None:
        """Finish the Redis writes in flight, then let the worker thread go."""
        await self.flush()
        self.worker.close()

    async def _write(self, record: Record) -> bool:
        """Store one adapter; False (and remembered for a later retry) when Redis is unreachable."""
        # on the worker: to_bytes may copy non-contiguous tensors with torch, kept serial there
        data = await self.worker.run(record.adapter.to_bytes)
        fields = {
            "data": data,
            "checksum": checksum(data),
            "description": record.adapter.description,
            "base_fingerprint": self.fingerprint,
            "checkpoint": self.checkpoint_id,
            "created": str(record.created),
        }

        async def write(r: aioredis.Redis) -> bool:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hset(KEY + record.id, mapping=fields)
                if self.ttl_s:
                    pipe.expire(KEY + record.id, self.ttl_s)
                pipe.zadd(INDEX, {record.id: time.time()}, nx=True)  # listing order: first stored first
                await pipe.execute()
            return True

        if await self._redis_call("write", write):
            return True
        self._unsynced.add(record.id)
        return False

    async def _read(self, adapter_id: str, timings: dict[str, float] | None = None) -> Record | None:
        """The entry from Redis, checked; ``timings`` gets the read's and the check-and-decode's ms."""
        start = time.perf_counter()
        fields = await self._redis_call("read", lambda r: r.hgetall(KEY + adapter_id))
        read = time.perf_counter()
        if timings is not None:
            timings["redis_read"] = (read - start) * 1000
        if not fields:
            return None
        try:
            data = fields[b"data"]
            if not verify(data, fields[b"checksum"].decode()):
                raise T2LError("checksum mismatch")
            if fields[b"base_fingerprint"].decode() != self.fingerprint:
                raise T2LError("made for another base")
            if fields[b"checkpoint"].decode() != self.checkpoint_id:
                raise T2LError("made by another checkpoint")
            adapter = LoraAdapter.from_bytes(data)
            if (
                adapter.base.fingerprint != self.fingerprint
                or adapter.rank % self.generator.config.hypernet.rank  # blends by weights: k x r
            ):
                raise T2LError("tensors made for another base or rank")
            if timings is not None:
                timings["decode"] = (time.perf_counter() - read) * 1000
            return Record(adapter_id, adapter, int(fields[b"created"]))
        except Exception as err:  # whatever is wrong with an entry, it is not trusted: discard it
            log.warning("discarding Redis entry %s: %s", adapter_id, err)
            self.metrics.corrupt_entries.inc()
            await self._redis_call("discard", lambda r: r.delete(KEY + adapter_id))
            await self._redis_call("discard", lambda r: r.zrem(INDEX, adapter_id))
            return None

    # ---- the public API

    async def get_or_create(self, spec: str | Blend, hold_write: bool = False) -> Lookup:
        """The adapter for a description (or a blend of them), from the fastest tier that has it. With
        ``hold_write``, a generated adapter's Redis write waits for ``Lookup.release_write`` (a chat
        request releases it at its first token; ``WRITE_HOLD_S`` bounds the wait)."""
        start = time.perf_counter()
        adapter_id = self.adapter_id(spec)
        record = self.l1.get(adapter_id)
        if record is not None:
            self.metrics.lookups.labels("l1").inc()
            return Lookup(record, "l1", {"total": (time.perf_counter() - start) * 1000})
        lock, users = self._locks.setdefault(adapter_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                record = self.l1.get(adapter_id)
                if record is not None:
                    self.metrics.lookups.labels("l1").inc()
                    return Lookup(record, "l1", {"total": (time.perf_counter() - start) * 1000})
                timings: dict[str, float] = {}
                record = await self._read(adapter_id, timings)
                if record is not None:
                    self.l1.put(record)
                    self.metrics.lookups.labels("redis").inc()
                    return Lookup(record, "redis", {**timings, "total": (time.perf_counter() - start) * 1000})
                adapter, timings = await self.worker.run(self._generate, spec)
                self.generations += 1
                self.metrics.lookups.labels("generated").inc()
                self.metrics.generation_seconds.labels("embed").observe(timings.embed_ms / 1000)
                self.metrics.generation_seconds.labels("hypernet").observe(timings.hypernet_ms / 1000)
                record = Record(adapter_id, adapter, int(time.time()))
                self.l1.put(record)
                hold = asyncio.Event() if hold_write else None
                self._write_later(record, hold)
                return Lookup(
                    record,
                    None,
                    {
                        "embed": timings.embed_ms,
                        "hypernet": timings.hypernet_ms,
                        "total": (time.perf_counter() - start) * 1000,
                    },
                    hold,
                )
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[adapter_id]

    async def get(self, adapter_id: str) -> tuple[Record, Tier] | None:
        """A stored adapter by id (L1, then Redis), or None."""
        record = self.l1.get(adapter_id)
        if record is not None:
            self.metrics.lookups.labels("l1").inc()
            return record, "l1"
        record = await self._read(adapter_id)
        if record is None:
            self.metrics.lookups.labels("miss").inc()
            return None
        self.l1.put(record)
        self.metrics.lookups.labels("redis").inc()
        return record, "redis"

    async def delete(self, adapter_id: str) -> bool:
        """Remove from every tier; True when some tier had it."""
        await self.flush()  # a write still in flight would bring the adapter back
        in_l1 = self.l1.pop(adapter_id) is not None
        self._unsynced.discard(adapter_id)

        async def delete(r: aioredis.Redis) -> int:
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(KEY + adapter_id)
                pipe.zrem(INDEX, adapter_id)
                pipe.publish(INVALIDATE, adapter_id)
                removed, _, _ = await pipe.execute()
            return int(removed)

        return bool(await self._redis_call("delete", delete)) or in_l1

    def forget(self, adapter_id: str) -> None:
        """Drop an adapter that another replica deleted from this one's L1."""
        self.l1.pop(adapter_id)

    async def drop_stale(self) -> None:
        """After missing invalidations (Redis was unreachable), drop L1 entries Redis no longer lists;
        adapters made meanwhile and not yet written stay."""
        listed = await self._redis_call("list", lambda r: r.zrange(INDEX, 0, -1))
        if listed is None:
            return
        known = {i.decode() for i in listed}
        for record in self.l1.records():
            if record.id not in known and record.id not in self._unsynced:
                self.l1.pop(record.id)

    async def list_ids(self, limit: int, after: str | None = None) -> tuple[list[str], bool]:
        """Adapter ids, oldest first, ``limit`` at a time after id ``after``; and whether more follow."""
        ids = await self._redis_call("list", lambda r: r.zrange(INDEX, 0, -1))
        ordered = [i.decode() for i in ids] if ids is not None else []
        known = set(ordered)
        ordered += [r.id for r in sorted(self.l1.records(), key=lambda r: r.created) if r.id not in known]
        if after is not None:
            ordered = ordered[ordered.index(after) + 1 :] if after in ordered else []
        return ordered[:limit], len(ordered) > limit
