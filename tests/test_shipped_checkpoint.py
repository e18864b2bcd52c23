"""The shipped checkpoint and its baseline: the trained default of the CLI and the server."""

import json

import httpx
import pytest
import torch
from safetensors.torch import load_file

from hypernet.adapter import LoraAdapter
from hypernet.card import training_legs
from hypernet.checkpoint import SHIPPED, default_checkpoint, read_config
from hypernet.generator import AdapterGenerator
from server.settings import ServerSettings
from tests.conftest import CHECKPOINTS
from tests.server_harness import running_server

pytestmark = pytest.mark.integration
BASELINE = CHECKPOINTS / "baselines" / "mt-lora-smollm2-135m"
DESCRIPTIONS = [
    "Translate the English sentence into Spanish.",
    "Classify the sentiment of the movie review as positive or negative.",
]


def test_the_shipped_checkpoint_is_the_trained_default(embedder):
    path = default_checkpoint(CHECKPOINTS)
    assert path.name == SHIPPED
    weights = load_file(str(path / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in weights.values())
    assert (path / "model.safetensors").stat().st_size <= 16 * 2**20
    generator = AdapterGenerator.load(path, embedder=embedder)
    config = generator.config
    assert config.trained and config.training["total_steps"] > 0 and config.training["examples"] > 0
    assert config.training["selected"] == "lowest validation loss" and config.training["val_tasks"] == 20
    card = (path / "README.md").read_text()
    assert config.id in card and "sni-train-test" in card and "sni-eval" in card
    (first, second), _ = generator.generate(DESCRIPTIONS)
    for m in first.B:  # a trained network: adapters that are not the identity, and differ by description
        assert first.B[m].abs().sum() > 0
        assert not torch.allclose(first.B[m], second.B[m])
    assert first.metadata["checkpoint_trained"] == "true"


def test_the_baseline_trained_on_the_same_budget_ships_beside_it():
    shipped = read_config(CHECKPOINTS / SHIPPED)
    adapter = LoraAdapter.from_peft(BASELINE, shipped.base)
    assert all(
        t.dtype == torch.float16 for t in load_file(str(BASELINE / "adapter_model.safetensors")).values()
    )
    assert any(b.abs().sum() > 0 for b in adapter.B.values())
    training = json.loads((BASELINE / "training.json").read_text())
    assert training["status"] == "multi-task-lora"

    # the same sampler and batches; each side's step picked by its own validation loss. Each leg of the
    # baseline ran side by side with the T2L leg of the same seed (same batches, sampler, regularisers;
    # the mismatched-description hinge is T2L's alone: a baseline has no description). A baseline
    # continuation that never beat its start is not in its chain, so T2L may have more legs.
    t2l_legs = training_legs(shipped.training)
    by_seed = {leg["settings"]["seed"]: leg for leg in t2l_legs}
    sampler = ("tasks_per_step", "examples_per_task", "grad_accum", "max_len")
    regularisers = ("label_smoothing", "neftune_alpha", "l2_generated")
    baseline_legs = training_legs(training)
    for leg in baseline_legs:
        twin = by_seed[leg["settings"]["seed"]]
        for key in (*sampler, *regularisers, "lr", "warmup_steps"):
            assert leg["settings"][key] == twin["settings"][key], key
        assert leg["selected"] == twin["selected"] == "lowest validation loss"
    first_run, first_twin = baseline_legs[-1], t2l_legs[-1]
    assert first_run["settings"] == first_twin["settings"] and first_run["steps"] == first_twin["steps"]


def test_the_server_says_its_default_checkpoint_is_trained(clean_redis, tmp_path):
    settings = ServerSettings(redis_url=clean_redis, state_dir=tmp_path / "state")
    with running_server(settings) as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=60).json()["data"]
        made = httpx.post(
            f"{server.url}/v1/adapters", json={"description": DESCRIPTIONS[0]}, timeout=120
        ).json()
    base = models[0]
    assert base["checkpoint_trained"] is True and base["checkpoint_status"] == "sft"
    assert made["checkpoint_trained"] is True and made["checkpoint"] == base["checkpoint"]
