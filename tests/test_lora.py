"""The batched per-row LoRA wrapper against PEFT, row by row."""

import copy

import torch
from peft import PeftModel

from hypernet import lora as hypernet_lora
from hypernet.adapter import LoraAdapter
from hypernet.base import spec_from_config
from hypernet.lora import LoraLayers, products_dtype
from tests.conftest import CHECKPOINTS, TARGETS, tiny_llama


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


def stacked(adapters: list[LoraAdapter]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-row A and B of ``adapters`` (row i = adapter i), as ``LoraLayers.set`` takes them."""
    A = {m: torch.stack([a.A[m] for a in adapters]) for m in TARGETS}
    B = {m: torch.stack([a.B[m] for a in adapters]) for m in TARGETS}
    return A, B


def assert_rows_match_peft(batched: torch.Tensor, base, adapters: list[LoraAdapter], ids, folder) -> None:
    """Row i of ``batched`` logits equals PEFT's with adapter i alone on row i of ``ids`` (≤ 1e-5)."""
    for row, adapter in enumerate(adapters):
        expected = peft_logits(base, adapter, folder / str(row), ids[row : row + 1])
        assert (batched[row] - expected[0]).abs().max() <= 1e-5


def test_each_row_matches_peft_with_that_rows_adapter(tiny_spec, tmp_path):
    base = tiny_llama()
    adapters = [random_adapter(tiny_spec, seed) for seed in (1, 2, 3)]
    ids = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(0))
    ours = copy.deepcopy(base)
    layers = LoraLayers(ours, tiny_spec)
    A, B = stacked(adapters)
    with torch.no_grad(), layers.applied(A, B, adapters[0].scaling):
        batched = ours(ids).logits
    assert_rows_match_peft(batched, base, adapters, ids, tmp_path)
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
    A, B = stacked(adapters)
    with torch.no_grad():
        with layers.applied(A, B, adapters[0].scaling):
            full = ours(ids[[0, 2]]).logits  # both adapter rows alone, in one batch
        layers.set(A, B, adapters[0].scaling, rows=torch.tensor([0, 2]))  # row 1 has no adapter
        mixed = ours(ids).logits
        layers.clear()
        plain = base(ids).logits
    torch.testing.assert_close(mixed[1], plain[1], rtol=0, atol=0)
    torch.testing.assert_close(mixed[[0, 2]], full, rtol=1e-5, atol=1e-5)


def test_partners_share_one_down_projection_and_a_different_input_gets_its_own(tiny_base_dir, tmp_path):
    """q_proj and v_proj of a layer read the same input: one joint product serves both. o_proj sits
    under the same parent but reads the attention's output: it must not take their product."""
    spec = spec_from_config(str(tiny_base_dir), ["q_proj", "o_proj", "v_proj"], CHECKPOINTS)
    base = tiny_llama()
    ours = copy.deepcopy(base)
    layers = LoraLayers(ours, spec)
    assert [kinds for _, kinds, _ in layers.groups] == [["q_proj", "o_proj", "v_proj"]] * spec.num_layers
    adapter = random_adapter(spec, 11)
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(2))
    A = {m: t[None] for m, t in adapter.A.items()}
    B = {m: t[None] for m, t in adapter.B.items()}
    products = []
    original = hypernet_lora.LoraGroup.low

    def counted(group, member, x):
        products.append(group._input is not x)  # True: this call computes a joint product
        return original(group, member, x)

    with torch.no_grad(), layers.applied(A, B, adapter.scaling):
        hypernet_lora.LoraGroup.low = counted
        try:
            grouped = ours(ids).logits
        finally:
            hypernet_lora.LoraGroup.low = original
    assert len(products) == 3 * spec.num_layers and sum(products) == 2 * spec.num_layers  # q (+v), o
    group = layers.groups[0][2]
    layers.set(A, B, adapter.scaling)
    joined = group.A
    layers.set(A, B, adapter.scaling)  # the engine sets the same tensors every step: joined once
    assert group.A is joined
    layers.set({m: t.clone() for m, t in A.items()}, B, adapter.scaling)
    assert group.A is not joined
    layers.clear()
    expected = peft_logits(base, adapter, tmp_path / "peft", ids)
    assert (grouped - expected).abs().max() <= 1e-5


def test_products_in_float32_under_a_bfloat16_base_match_a_float32_reference(tiny_spec, monkeypatch):
    """Serving on a CPU runs a bfloat16 base's low-rank products in float32 (``products_dtype``); the rows
    with and without an adapter keep the base's dtype and match the float32 model within bfloat16's error."""
    assert products_dtype(torch.bfloat16, "cpu") == torch.float32
    assert products_dtype(torch.bfloat16, "meta") == torch.bfloat16  # elsewhere: the base's own
    reference = tiny_llama()
    half = copy.deepcopy(reference).to(torch.bfloat16)
    adapters = [random_adapter(tiny_spec, seed) for seed in (1, 2)]
    A, B = stacked(adapters)
    ids = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 2])  # row 1 runs the base alone
    outputs = {}
    for name, model, dtype in (("reference", reference, None), ("half", half, torch.float32)):
        layers = LoraLayers(model, tiny_spec, dtype)
        with torch.no_grad():
            layers.set(A, B, adapters[0].scaling, rows)
            outputs[name] = model(ids).logits
            layers.clear()
    assert outputs["half"].dtype == torch.bfloat16
    torch.testing.assert_close(outputs["half"].float(), outputs["reference"], rtol=0.05, atol=0.05)
    seen, baddbmm = [], torch.baddbmm

    def spy(out, low, B, **kwargs):
        seen.append((out.dtype, low.dtype, B.dtype))
        return baddbmm(out, low, B, **kwargs)

    monkeypatch.setattr(hypernet_lora.torch, "baddbmm", spy)
    layers = LoraLayers(half, tiny_spec, torch.float32)
    with torch.no_grad(), layers.applied(A, B, adapters[0].scaling):
        half(ids[:2])  # every row adapted: the fused product
    assert seen and set(seen) == {(torch.float32,) * 3}


def test_setting_the_same_tensors_again_reuses_their_views_and_gives_the_same_outputs(tiny_spec):
    """The engine sets one batch's tensors at every decode step: the second time the wrapped linears get
    the very views of the first (none made again), a step's outputs are unchanged, other tensors get views
    of their own, and tensors that require grad are never kept (they would keep a graph alive)."""
    model = tiny_llama()
    layers = LoraLayers(model, tiny_spec)
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    first, second = (
        stacked([random_adapter(tiny_spec, s) for s in (1, 2)]),
        stacked([random_adapter(tiny_spec, s) for s in (3, 4)]),
    )
    module = layers.layers[TARGETS[0]][0]
    with torch.no_grad():
        layers.set(*first, 2.0)
        views, expected = module.A, model(ids).logits
        layers.clear()
        layers.set(*second, 2.0)
        assert module.A is not views
        other = model(ids).logits
        layers.set(*first, 2.0)  # the two most recent sets are kept
        assert module.A is views
        assert torch.equal(model(ids).logits, expected) and not torch.equal(other, expected)
    layers.clear()
    trained = {m: t.clone().requires_grad_() for m, t in first[0].items()}, first[1]
    layers.set(*trained, 2.0)
    assert all(
        trained[0][m] is not kept for made_from, _ in layers._views for kept in made_from for m in trained[0]
    )
