"""Our checkpoint format: round trip, integrity, and refusal of the wrong base or embedder."""

import json
import shutil

import pytest
import torch

from hypernet.base import spec_from_config
from hypernet.checkpoint import (
    EmbedderSpec,
    default_checkpoint,
    initial_checkpoint,
    load_checkpoint,
    read_config,
)
from hypernet.errors import T2LError
from hypernet.model import HyperLoRA
from tests.conftest import CHECKPOINTS, TARGETS, tiny_llama


def test_round_trip_gives_the_same_network(tiny_checkpoint):
    model, config = load_checkpoint(tiny_checkpoint)
    again, _ = load_checkpoint(tiny_checkpoint)
    emb = torch.randn(2, config.hypernet.embed_dim)
    with torch.no_grad():
        for m, t in model(emb)[1].items():
            assert torch.equal(t, again(emb)[1][m])
    assert config.id.startswith("ck-") and config.status == "untrained"
    assert (tiny_checkpoint / "model.safetensors").read_bytes()[:8]  # safetensors, not a pickle
    assert not list(tiny_checkpoint.glob("*.pt")) and not list(tiny_checkpoint.glob("*.bin"))


def test_init_is_deterministic_per_seed(tiny_spec, embedder_spec, tmp_path):
    from hypernet.checkpoint import save_checkpoint

    ids = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model, config = initial_checkpoint(tiny_spec, embedder_spec, "S", rank=4, alpha=8.0, seed=seed)
        ids.append(save_checkpoint(model, config, tmp_path / name).id)
    assert ids[0] == ids[1] != ids[2]


def test_another_base_is_refused_naming_both(tiny_checkpoint, tmp_path):
    other_dir = tmp_path / "wider"
    tiny_llama(num_hidden_layers=3).save_pretrained(other_dir)
    other = spec_from_config(str(other_dir), TARGETS, CHECKPOINTS)
    with pytest.raises(T2LError) as err:
        load_checkpoint(tiny_checkpoint, base=other)
    message = str(err.value)
    assert str(other_dir) in message and read_config(tiny_checkpoint).base.name in message
    assert "3 layers" in message and "2 layers" in message


def test_another_embedder_is_refused_naming_both(tiny_checkpoint):
    with pytest.raises(T2LError, match=r"all-MiniLM-L6-v2.*dim 384.*BAAI/bge-large-en-v1.5.*dim 1024"):
        load_checkpoint(tiny_checkpoint, embedder=EmbedderSpec(name="BAAI/bge-large-en-v1.5", dim=1024))


def test_corrupt_weights_and_bad_config_are_reported(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(T2LError, match="checksum"):
        load_checkpoint(broken)
    config = json.loads((broken / "config.json").read_text())
    config["hypernet"]["rank"] = -1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(T2LError, match=r"config.json is not a valid T2L checkpoint config: hypernet.rank"):
        read_config(broken)
    with pytest.raises(T2LError, match="no T2L checkpoint at"):
        read_config(tmp_path / "nowhere")


def test_default_checkpoint_prefers_the_shipped_one(tiny_checkpoint, tmp_path):
    with pytest.raises(T2LError, match="make setup"):
        default_checkpoint(tmp_path)
    shutil.copytree(tiny_checkpoint, tmp_path / "untrained-smollm2-135m")
    assert default_checkpoint(tmp_path).name == "untrained-smollm2-135m"
    shutil.copytree(tiny_checkpoint, tmp_path / "t2l-smollm2-135m")
    assert default_checkpoint(tmp_path).name == "t2l-smollm2-135m"


def test_state_dict_holds_every_buffer(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    assert isinstance(model, HyperLoRA)
    assert {"shift_A_q_proj", "shift_B_v_proj", "ab_emb", "heads.q_proj.weight"} <= set(model.state_dict())
