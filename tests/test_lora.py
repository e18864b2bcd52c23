"""The batched per-row LoRA wrapper against PEFT, row by row."""

import copy

import torch
from peft import PeftModel

from hypernet.adapter import LoraAdapter
from hypernet.lora import LoraLayers
from tests.conftest import TARGETS, tiny_llama


def random_adapter(spec, seed: int, rank: int = 4) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    A = {
        m: torch.randn(spec.num_layers, rank, s.in_features, generator=gen) * 0.1
        for m, s in spec.modules.items()
    }
    B = {
        m: torch.randn(spec.num_layers, s.out_features, rank, generator=gen) * 0.1
        for m, s in spec.modules.items()
    }
    return LoraAdapter(A=A, B=B, rank=rank, alpha=8.0, use_rslora=True, base=spec, description=f"task {seed}")


def peft_logits(base, adapter: LoraAdapter, folder, ids) -> torch.Tensor:
    adapter.save_peft(folder)
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    with torch.no_grad():
        return model(ids).logits


def test_each_row_matches_peft_with_that_rows_adapter(tiny_spec, tmp_path):
    base = tiny_llama()
    adapters = [random_adapter(tiny_spec, seed) for seed in (1, 2, 3)]
    ids = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(0))
    ours = copy.deepcopy(base)
    layers = LoraLayers(ours, tiny_spec)
    A = {m: torch.stack([a.A[m] for a in adapters]) for m in TARGETS}
    B = {m: torch.stack([a.B[m] for a in adapters]) for m in TARGETS}
    with torch.no_grad(), layers.applied(A, B, adapters[0].scaling):
        batched = ours(ids).logits
    for row, adapter in enumerate(adapters):
        expected = peft_logits(base, adapter, tmp_path / str(row), ids[row : row + 1])
        assert (batched[row] - expected[0]).abs().max() <= 1e-5
    with torch.no_grad():
        plain = base(ids).logits
    assert (batched - plain).abs().max() > 1e-3  # the adapters do change the output


def test_cleared_layers_give_the_base_output_and_decode_one_token_rows(tiny_spec):
    base = tiny_llama()
    ours = copy.deepcopy(base)
    layers = LoraLayers(ours, tiny_spec)
    assert (
        LoraLayers(ours, tiny_spec).layers["q_proj"][0] is layers.layers["q_proj"][0]
    )  # wrapping is idempotent
    ids = torch.randint(0, 128, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, base(ids).logits, rtol=0, atol=0)
    adapter = random_adapter(tiny_spec, 7)
    module = layers.layers["q_proj"][0]
    x = torch.randn(2, 64)
    with (
        torch.no_grad(),
        layers.applied(
            {m: t[None] for m, t in adapter.A.items()},
            {m: t[None] for m, t in adapter.B.items()},
            adapter.scaling,
        ),
    ):
        two_d, three_d = module(x), module(x[:, None])[:, 0]
    torch.testing.assert_close(two_d, three_d)


def test_gradients_flow_into_generated_A_and_B(tiny_spec):
    model = tiny_llama().requires_grad_(False)
    layers = LoraLayers(model, tiny_spec)
    adapter = random_adapter(tiny_spec, 3)
    A = {m: t[None].clone().requires_grad_() for m, t in adapter.A.items()}
    B = {m: t[None].clone().requires_grad_() for m, t in adapter.B.items()}
    ids = torch.randint(0, 128, (1, 6))
    with layers.applied(A, B, adapter.scaling):
        model(ids, labels=ids).loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in [*A.values(), *B.values()])
    assert all(p.grad is None for p in model.parameters())


def test_rows_without_an_adapter_skip_it(tiny_spec):
    base = tiny_llama()
    ours = copy.deepcopy(base)
    layers = LoraLayers(ours, tiny_spec)
    adapters = [random_adapter(tiny_spec, seed) for seed in (4, 5)]
    ids = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(1))
    A = {m: torch.stack([a.A[m] for a in adapters]) for m in TARGETS}
    B = {m: torch.stack([a.B[m] for a in adapters]) for m in TARGETS}
    with torch.no_grad():
        with layers.applied(A, B, adapters[0].scaling):
            full = ours(ids[[0, 2]]).logits  # both adapter rows alone, in one batch
        layers.set(A, B, adapters[0].scaling, rows=torch.tensor([0, 2]))  # row 1 has no adapter
        mixed = ours(ids).logits
        layers.clear()
        plain = base(ids).logits
    torch.testing.assert_close(mixed[1], plain[1], rtol=0, atol=0)
    torch.testing.assert_close(mixed[[0, 2]], full, rtol=1e-5, atol=1e-5)
