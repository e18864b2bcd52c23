"""The running service's parts, built once at start-up and closed at shutdown.

The base model stays resident with its target linears wrapped once for batched LoRA; the slot bank,
the engine thread, the adapter store and Redis (embedded or external) hang off it.
"""

import asyncio
import contextlib
import logging
from pathlib import Path

import redis.asyncio as aioredis
import torch
from redis.exceptions import RedisError

from hypernet.attention import use_packed_decode_attention
from hypernet.base import load_base, load_tokenizer, spec_from_config, spec_of
from hypernet.checkpoint import check_compatible, default_checkpoint
from hypernet.errors import T2LError
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers, products_dtype
from hypernet.packed_linear import pack_linears
from server.engine import Engine
from server.generation import LocalBackend
from server.metrics import Metrics
from server.redis_client import redis_client
from server.redis_server import EmbeddedRedis
from server.settings import ServerSettings
from server.slots import SlotBank
from server.store import INVALIDATE, AdapterStore, L1Cache
from server.threads import on_own_thread
from server.vllm import VLLMBackend

log = logging.getLogger("t2l.server")
RESTART_BACKOFF_S = (1.0, 30.0)  # first and longest wait between tries to restart the embedded Redis


class Service:
    def __init__(self, settings: ServerSettings, metrics: Metrics | None = None):
        self.settings = settings
        self.embedded: EmbeddedRedis | None = None
        self._watch: asyncio.Task | None = None
        self._listen: asyncio.Task | None = None
        self.metrics = metrics or Metrics()

    async def start(self) -> None:
        s = self.settings
        device = s.torch_device()
        path: Path = s.checkpoint or default_checkpoint(s.checkpoints_dir)
        self.checkpoint_path = path
        self.generator = await on_own_thread(
            AdapterGenerator.load, path, None, device, s.trust_remote_code, s.generator_runtime, s.cache_dir
        )
        config = self.generator.config
        self.checkpoint = config
        if config.trained:
            log.info(
                "checkpoint %s (%s) is trained (%s, %s steps)",
                path,
                config.id,
                config.status,
                config.training.get("total_steps", config.training.get("steps", "?")),
            )
        else:
            log.warning(
                "checkpoint %s (%s) is UNTRAINED: every adapter it makes is the identity (B = 0) "
                "and answers equal the base model's",
                path,
                config.id,
            )
        self.base_name = s.base_model
        self.backend = await (self._vllm() if s.engine == "vllm" else self._local(device))
        if not self.tokenizer.chat_template:
            raise T2LError(f"base model {s.base_model!r} has no chat template")
        url = s.redis_url
        if url is None:
            self.embedded = EmbeddedRedis(s.state_dir)
            url = await asyncio.to_thread(self.embedded.start)
        self.redis = redis_client(url, socket_timeout=2, socket_connect_timeout=2)
        # subscriptions wait for messages indefinitely: a client of their own, without a read timeout
        self.subscriber = aioredis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=15)
        self.store = AdapterStore(
            self.generator,
            self.redis,
            L1Cache(s.l1_max_adapters, s.l1_max_bytes),
            s.adapter_ttl_s,
            self.metrics,
            getattr(torch, s.adapter_dtype),
        )
        if not await self.store.ping():
            log.warning("Redis at %s is unreachable: starting degraded (L1 and generation only)", url)
        self._watch = asyncio.create_task(self._watch_redis())
        self._listen = asyncio.create_task(self._listen_invalidations())
        log.info(
            "ready: base %s, checkpoint %s (%s) on %s, embedder %s on %s, Redis %s",
            s.base_model,
            config.id,
            config.status,
            self.generator.runtime,
            self.generator.embedder.name,
            self.generator.embedder.runtime,
            url,
        )

    async def _local(self, device: str) -> LocalBackend:
        """Our engine: the base model resident here, its target linears wrapped for per-row LoRA."""
        backend = await on_own_thread(self._build_local, device)
        backend.engine.start()
        return backend

    def _build_local(self, device: str) -> LocalBackend:
        """The base model, slot bank and engine, built on a thread that ends (``server.threads``)."""
        s, config = self.settings, self.checkpoint
        dtype = s.torch_base_dtype()
        model, self.tokenizer = load_base(s.base_model, s.checkpoints_dir, dtype, device)
        log.info("base model in %s", str(dtype).removeprefix("torch."))
        if s.packed_weights:
            log.info("base model: %d linear layers reordered for oneDNN", pack_linears(model))
        use_packed_decode_attention(model)
        check_compatible(
            config, self.checkpoint_path, base=spec_of(model, s.base_model, list(config.base.modules))
        )
        rank = s.slot_rank or config.hypernet.rank
        if rank < config.hypernet.rank:
            raise T2LError(f"T2L_SLOT_RANK={rank} is below the checkpoint's rank {config.hypernet.rank}")
        lora_dtype = products_dtype(model.dtype, device)
        self.bank = SlotBank(config.base, rank, s.slots, device, lora_dtype, self.metrics)
        self.engine = Engine(
            model,
            self.tokenizer,
            LoraLayers(model, config.base, lora_dtype),
            self.bank,
            config.hypernet.scaling,
            s.max_batch,
            s.batch_window_ms,
            s.max_queue,
            self.metrics,
            nice=s.engine_nice,
            prefill_chunk=s.prefill_chunk_tokens,
        )
        return LocalBackend(self.engine, self.bank)

    async def _vllm(self) -> VLLMBackend:
        """vLLM generates: only the tokenizer (prompt limits) and the base's shapes (meta) load here."""
        s, config = self.settings, self.checkpoint
        spec = await asyncio.to_thread(
            spec_from_config, s.base_model, list(config.base.modules), s.checkpoints_dir
        )
        check_compatible(config, self.checkpoint_path, base=spec)
        self.tokenizer = await asyncio.to_thread(load_tokenizer, s.base_model, s.checkpoints_dir)
        key = s.vllm_api_key.get_secret_value() if s.vllm_api_key else None
        log.info("engine: vLLM at %s (adapters written to %s)", ", ".join(s.vllm_url), s.vllm_adapters)
        return VLLMBackend(
            s.vllm_url, s.vllm_adapters, s.vllm_max_adapters, self.metrics, key, s.generation_timeout_s
        )

    async def _watch_redis(self) -> None:
        """Ping Redis often while it is down (to resume writes), now and then while it is up; restart
        the embedded Redis when it exits on its own, with capped backoff while it will not start."""
        backoff = RESTART_BACKOFF_S[0]
        while True:
            await asyncio.sleep(1.0 if self.store.degraded or self.embedded else 5.0)
            code = self.embedded.exit_code() if self.embedded else None
            if code is not None:
                log.warning("the embedded Redis exited (status %s): restarting it on its AOF", code)
                try:
                    await asyncio.to_thread(self.embedded.start)
                    self.metrics.redis_restarts.inc()
                    backoff = RESTART_BACKOFF_S[0]
                except T2LError as err:
                    log.error("%s; next try in %.0f s", err, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, RESTART_BACKOFF_S[1])
                    continue
            await self.store.ping()

    async def _listen_invalidations(self) -> None:
        """Drop adapters other replicas delete (Redis pub/sub) from L1 and from the slots; after a lost
        connection, resubscribe and drop whatever was deleted meanwhile."""
        while True:
            try:
                async with self.subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(INVALIDATE)
                    await self.store.drop_stale()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            adapter_id = message["data"].decode()
                            self.store.forget(adapter_id)
                            await self.backend.forget(adapter_id)
            except (RedisError, OSError):
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for task in (self._watch, self._listen):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if hasattr(self, "store"):
            await self.store.close()
        if hasattr(self, "backend"):
            await self.backend.stop()
        if hasattr(self, "redis"):
            await self.redis.aclose()
            await self.subscriber.aclose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
