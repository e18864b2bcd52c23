"""Base-model specs and fingerprints, from configs alone and from loaded models."""

import pytest

from hypernet.base import spec_from_config, spec_of
from hypernet.errors import T2LError
from tests.conftest import CHECKPOINTS, TARGETS, tiny_llama


def test_spec_of_the_tiny_llama(tiny_spec, tiny_base_dir):
    assert tiny_spec.architecture == "LlamaForCausalLM" and tiny_spec.num_layers == 2
    q, v = tiny_spec.modules["q_proj"], tiny_spec.modules["v_proj"]
    assert (q.in_features, q.out_features, v.in_features, v.out_features) == (64, 64, 64, 32)
    assert q.path == "model.layers.{layer}.self_attn.q_proj" and q.at(1) == "model.layers.1.self_attn.q_proj"
    assert tiny_spec.name == str(tiny_base_dir) and len(tiny_spec.fingerprint) == 16


def test_fingerprint_from_config_equals_fingerprint_of_the_real_model(tiny_spec):
    assert spec_of(tiny_llama(), "any name", TARGETS).fingerprint == tiny_spec.fingerprint


def test_fingerprint_changes_with_the_architecture(tiny_spec, tmp_path):
    tiny_llama(num_key_value_heads=4).save_pretrained(tmp_path)
    other = spec_from_config(str(tmp_path), TARGETS, CHECKPOINTS)
    assert other.modules["v_proj"].out_features == 64 and other.fingerprint != tiny_spec.fingerprint


def test_missing_target_module_is_named(tiny_base_dir):
    with pytest.raises(T2LError, match="'qkv_proj' appears in layers \\[\\]"):
        spec_from_config(str(tiny_base_dir), ["qkv_proj"], CHECKPOINTS)


def test_unknown_ids_and_missing_paths_are_one_line_errors(tmp_path):
    with pytest.raises(T2LError, match="'no-such-org/no-such-model': it is not a local folder"):
        spec_from_config("no-such-org/no-such-model", TARGETS, CHECKPOINTS)
    with pytest.raises(T2LError, match="no GGUF file at"):
        spec_from_config(str(tmp_path / "model.gguf"), TARGETS, CHECKPOINTS)
    with pytest.raises(T2LError, match=str(tmp_path / "absent")):
        spec_from_config(str(tmp_path / "absent"), TARGETS, CHECKPOINTS)
