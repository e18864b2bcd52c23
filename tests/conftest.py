"""Shared fixtures: a tiny random Llama built here, the real MiniLM embedder, the real SmolLM2 base."""

import gc
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; unknown ids fail at once

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hypernet.base import BaseSpec, spec_from_config
from hypernet.checkpoint import EmbedderSpec, initial_checkpoint, save_checkpoint
from hypernet.embed import Embedder
from hypernet.model import HyperLoRA
from hypernet.settings import DEFAULT_BASE_MODEL, DEFAULT_EMBEDDER, REPO_ROOT

CHECKPOINTS = REPO_ROOT / "checkpoints"
TARGETS = ["q_proj", "v_proj"]


def tiny_llama(**overrides) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 64 and grouped-query attention (v_proj narrower than q_proj)."""
    fields = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**(fields | overrides))
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def thread_count() -> int:
    """This process's threads now, OpenMP workers included (Linux: /proc/self/task)."""
    return len(os.listdir("/proc/self/task"))


def nice_of(tid: int) -> int:
    """A thread's nice value (Linux: /proc/self/task/<tid>/stat, field 19)."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[16])


def settled_thread_count(interval_s: float = 0.05) -> int:
    """This process's thread count once it stops changing: the OpenMP workers of a thread that ended
    end some time after it, and a count taken meanwhile would credit (or blame) the next test. Collected
    first: an adapter store an earlier test left unclosed keeps its worker thread until it is collected."""
    gc.collect()
    count, settled = thread_count(), False
    while not settled:
        time.sleep(interval_s)
        now = thread_count()
        settled, count = now == count, now
    return count


def randomize_heads(model: HyperLoRA, seed: int = 1, std: float = 0.02) -> HyperLoRA:
    """Give the zero-initialised heads random weights so generated adapters have B != 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * std)
    return model


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_base_dir) -> BaseSpec:
    return spec_from_config(str(tiny_base_dir), TARGETS, CHECKPOINTS)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(DEFAULT_EMBEDDER)


@pytest.fixture(scope="session")
def embedder_spec(embedder) -> EmbedderSpec:
    return EmbedderSpec(name=embedder.name, dim=embedder.dim, pooling=embedder.pooling)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_spec, embedder_spec) -> Path:
    """A tiny-base checkpoint whose heads are random, so its adapters are not the identity."""
    model, config = initial_checkpoint(tiny_spec, embedder_spec, "S", rank=4, alpha=8.0, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(randomize_heads(model), config, path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    path = CHECKPOINTS / "base" / "smollm2-135m-instruct"
    if not (path / "config.json").is_file():
        pytest.fail(f"the real base is missing at {path}: run `make setup` (or `t2l fetch-base`)")
    return path


@pytest.fixture(scope="session")
def smollm2_spec(smollm2_dir) -> BaseSpec:
    return spec_from_config(DEFAULT_BASE_MODEL, TARGETS, CHECKPOINTS)


@pytest.fixture(scope="session")
def tiny_chat_base(tmp_path_factory, smollm2_dir) -> Path:
    from tests.server_harness import make_tiny_chat_base

    return make_tiny_chat_base(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def tiny_chat_checkpoint(tmp_path_factory, tiny_chat_base, embedder_spec) -> Path:
    """A checkpoint for the tiny chat base whose adapters clearly change its output."""
    spec = spec_from_config(str(tiny_chat_base), TARGETS, CHECKPOINTS)
    model, config = initial_checkpoint(spec, embedder_spec, "S", rank=4, alpha=8.0, seed=0)
    path = tmp_path_factory.mktemp("chat-ckpt") / "tiny-chat"
    save_checkpoint(randomize_heads(model, std=0.05), config, path)
    return path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real Redis server for the tests, on a free loopback port, stopped at the end."""
    from server.redis_server import EmbeddedRedis
    from tests.server_harness import free_port

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def clean_redis(redis_url) -> str:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture
def server_settings(tiny_chat_base, tiny_chat_checkpoint, clean_redis, tmp_path):
    """Settings for a server on the tiny chat base, with the test Redis; override fields per test."""
    from server.settings import ServerSettings

    def make(**overrides) -> ServerSettings:
        fields = dict(
            base_model=str(tiny_chat_base),
            checkpoint=tiny_chat_checkpoint,
            redis_url=clean_redis,
            state_dir=tmp_path / "state",
            batch_window_ms=20.0,
        )
        return ServerSettings(**(fields | overrides))

    return make
