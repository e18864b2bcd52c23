"""Integration on the real default base, SmolLM2-135M-Instruct (converted from its GGUF by `make setup`)."""

import copy

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from hypernet.base import load_base
from hypernet.checkpoint import UNTRAINED, initial_checkpoint, save_checkpoint
from hypernet.cli import main
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers
from hypernet.settings import DEFAULT_BASE_MODEL
from tests.conftest import CHECKPOINTS, randomize_heads

pytestmark = pytest.mark.integration

PROMPT = [
    {"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in total?"}
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_base(DEFAULT_BASE_MODEL, CHECKPOINTS)


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
    _, tokenizer = smollm2
    return tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


def test_real_base_spec(smollm2_spec):
    assert smollm2_spec.architecture == "LlamaForCausalLM" and smollm2_spec.num_layers == 30
    q, v = smollm2_spec.modules["q_proj"], smollm2_spec.modules["v_proj"]
    assert (q.in_features, q.out_features, v.in_features, v.out_features) == (576, 576, 576, 192)


def test_generated_adapter_loads_in_peft_and_matches_the_batched_lora(
    smollm2, smollm2_spec, embedder, embedder_spec, prompt_ids, tmp_path
):
    model, config = initial_checkpoint(smollm2_spec, embedder_spec, "M", rank=8, alpha=16.0, seed=0)
    save_checkpoint(randomize_heads(model, std=0.002), config, tmp_path / "ckpt")
    generator = AdapterGenerator.load(tmp_path / "ckpt", embedder=embedder)
    (adapter,), _ = generator.generate(["Answer grade-school math word problems, show the steps."])
    adapter.save_peft(tmp_path / "adapter")

    base, _ = smollm2
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter")).eval()
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == 30 * 2 * 2
    assert {k.replace(".weight", ".default.weight") for k in saved} == {
        k for k in peft.state_dict() if "lora_" in k
    }

    ours = copy.deepcopy(base)
    layers = LoraLayers(ours, smollm2_spec)
    A = {m: t[None] for m, t in adapter.A.items()}
    B = {m: t[None] for m, t in adapter.B.items()}
    with torch.no_grad():
        expected = peft(prompt_ids).logits
        with layers.applied(A, B, adapter.scaling):
            got = ours(prompt_ids).logits
        plain = base(prompt_ids).logits
    # one linear matches PEFT to 1e-5 (tests/test_lora.py); through 30 layers the fused update
    # (baddbmm: y + s*low@B in one kernel, PEFT rounds s*(low@B) then adds) drifts by some float32 ulps
    # of the logits, so the bound here is relative to their scale
    assert (got - expected).abs().max() <= 2e-5 * expected.abs().max()
    assert (expected - plain).abs().max() > 1e-3

    with torch.no_grad():
        peft_tokens = peft.generate(prompt_ids, max_new_tokens=12, do_sample=False)
        with layers.applied(A, B, adapter.scaling):
            our_tokens = ours.generate(prompt_ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(peft_tokens, our_tokens)


def test_untrained_default_checkpoint_is_the_identity(smollm2, prompt_ids, embedder, tmp_path):
    generator = AdapterGenerator.load(CHECKPOINTS / UNTRAINED, embedder=embedder)
    assert generator.config.status == "untrained"
    (adapter,), _ = generator.generate(["Translate English to Spanish."])
    assert all(torch.count_nonzero(b) == 0 for b in adapter.B.values())
    adapter.save_peft(tmp_path)
    base, _ = smollm2
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(prompt_ids).logits, base(prompt_ids).logits, rtol=0, atol=0)


def test_cli_generate_with_the_defaults(capsys, tmp_path):
    assert main(["generate", "Write a haiku about the sea.", "-o", str(tmp_path / "ad")]) == 0
    out = capsys.readouterr().out
    assert "untrained-smollm2-135m" in out or "t2l-smollm2-135m" in out
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
