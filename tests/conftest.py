"""Shared fixtures: a tiny random Llama built here, the real MiniLM embedder, the real SmolLM2 base."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; unknown ids fail at once

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
