"""Generated adapters as PEFT folders and as safetensors bytes."""

import copy
import json
import time

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from hypernet.adapter import LoraAdapter, read_header
from hypernet.embed import Embedder
from hypernet.errors import T2LError
from hypernet.generator import AdapterGenerator
from hypernet.lora import LoraLayers
from hypernet.settings import DEFAULT_EMBEDDER
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def generator(tiny_checkpoint, embedder) -> AdapterGenerator:
    return AdapterGenerator.load(tiny_checkpoint, embedder=embedder)


def test_peft_loads_the_folder_with_no_missing_or_unexpected_keys_and_same_logits(generator, tmp_path):
    (adapter,), _ = generator.generate(["Translate English sentences to French."])
    adapter.save_peft(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["use_rslora"] is True
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["task_type"] == "CAUSAL_LM"
    assert "Translate English sentences to French." in (tmp_path / "README.md").read_text()

    base = tiny_llama()
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    expected_keys = {k for k in peft.state_dict() if "lora_" in k}
    assert {k.replace(".weight", ".default.weight") for k in saved} == expected_keys

    layers = LoraLayers(base, adapter.base)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = peft(ids).logits
        with layers.applied(
            {m: t[None] for m, t in adapter.A.items()},
            {m: t[None] for m, t in adapter.B.items()},
            adapter.scaling,
        ):
            ours = base(ids).logits
        plain = base(ids).logits
    assert (ours - expected).abs().max() <= 1e-5
    assert (expected - plain).abs().max() > 1e-4


def test_bytes_round_trip_keeps_tensors_and_metadata(generator):
    (adapter,), _ = generator.generate(["Summarise news articles in one sentence."])
    data = adapter.to_bytes()
    header = read_header(data)
    assert header["description"] == "Summarise news articles in one sentence."
    back = LoraAdapter.from_bytes(data)
    for m in adapter.A:
        assert torch.equal(back.A[m], adapter.A[m]) and torch.equal(back.B[m], adapter.B[m])
    assert (back.rank, back.alpha, back.use_rslora) == (adapter.rank, adapter.alpha, adapter.use_rslora)
    assert back.base.fingerprint == adapter.base.fingerprint and back.metadata == adapter.metadata


def test_shape_mismatch_is_refused(generator):
    (adapter,), _ = generator.generate(["Classify movie reviews as positive or negative."])
    bad = copy.copy(adapter)
    bad.B = dict(adapter.B, v_proj=adapter.B["v_proj"][:, :-1])
    with pytest.raises(T2LError, match="v_proj"):
        LoraAdapter.from_bytes(bad.to_bytes())


def test_generation_metadata_and_timings(generator):
    adapters, timings = generator.generate(["Answer trivia questions.", "x " * 400])
    assert [a.metadata["description_truncated"] for a in adapters] == ["false", "true"]
    assert adapters[0].metadata["checkpoint"] == generator.config.id
    assert adapters[0].metadata["base_fingerprint"] == generator.config.base.fingerprint
    assert 0 < timings.embed_ms <= timings.total_ms and 0 < timings.hypernet_ms <= timings.total_ms
    assert not torch.equal(adapters[0].B["q_proj"], adapters[1].B["q_proj"])


def test_onnx_runtime_leaves_no_thread_spinning_after_a_generation(tiny_checkpoint, tmp_path):
    """ONNX Runtime's pool threads spin while a run lasts and stop when it ends: left spinning, they
    would take the cores the base model decodes on for tens of ms after each adapter."""
    embedder = Embedder(DEFAULT_EMBEDDER, runtime="onnx", cache_dir=tmp_path)
    onnx = AdapterGenerator.load(tiny_checkpoint, embedder=embedder, runtime="onnx", cache_dir=tmp_path)
    assert onnx.runtime == embedder.runtime == "onnx"
    idle = []
    for i in range(3):
        onnx.generate([f"Classify reviews of kind {i}."])
        before = time.process_time()
        time.sleep(0.3)
        idle.append(time.process_time() - before)
    assert min(idle) < 0.01, f"CPU seconds used in the 0.3 s after each generation: {idle}"


def test_the_hypernetwork_on_onnx_runtime_makes_pytorchs_adapters_from_a_graph_per_checkpoint(
    generator, tiny_checkpoint, embedder, tmp_path
):
    onnx = AdapterGenerator.load(tiny_checkpoint, embedder=embedder, runtime="onnx", cache_dir=tmp_path)
    assert onnx.runtime == "onnx"
    texts = ["Translate English sentences to French.", "Classify reviews as positive or negative."]
    ours, _ = onnx.generate(texts)
    reference, _ = generator.generate(texts)
    for a, b in zip(ours, reference, strict=True):
        assert float(a.B["q_proj"].abs().max()) > 0  # real adapters, not the identity
        for m in a.A:
            torch.testing.assert_close(a.A[m], b.A[m], atol=1e-5, rtol=0)
            torch.testing.assert_close(a.B[m], b.B[m], atol=1e-5, rtol=0)
    (graph,) = (tmp_path / "onnx").glob("hypernet-*.onnx")
    exported = graph.stat().st_mtime_ns
    AdapterGenerator.load(tiny_checkpoint, embedder=embedder, runtime="onnx", cache_dir=tmp_path)
    assert graph.stat().st_mtime_ns == exported  # the same weights: the same graph, not exported again
    with torch.no_grad():
        onnx.model.heads["q_proj"].weight.mul_(2)  # other weights (another checkpoint): a graph of its own
    AdapterGenerator(onnx.model, onnx.config, embedder, tiny_checkpoint, "onnx", tmp_path)
    assert len(list((tmp_path / "onnx").glob("hypernet-*.onnx"))) == 2
