"""Reordered (oneDNN) linear weights: the same results as the plain product, gradients where asked for, and
the per-row LoRA on top still equal to PEFT's."""

import copy

import pytest
import torch
from torch import nn

from hypernet.lora import LoraLayers
from hypernet.packed_linear import JoinedLinear, PackedLinear, pack_linears, packing_available
from tests.conftest import tiny_llama
from tests.test_lora import assert_rows_match_peft, random_adapter, stacked

pytestmark = pytest.mark.skipif(
    not packing_available(torch.float32, "cpu"), reason="this torch build has no oneDNN linear ops"
)


@pytest.mark.parametrize("rows", [1, 3, 8, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_the_plain_product_for_any_row_count(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 200, bias=bias)
    packed = PackedLinear(linear)
    x = torch.randn(rows, 96)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed(x[:, None])[:, 0], linear(x), rtol=1e-5, atol=1e-5)  # [rows, 1, in]
    assert packed.weight is linear.weight and packed.bias is linear.bias


def test_bfloat16_packed_products_match_where_the_cpu_supports_them():
    if not packing_available(torch.bfloat16, "cpu"):
        pytest.skip("no bfloat16 oneDNN products on this CPU")
    torch.manual_seed(0)
    linear = nn.Linear(64, 128, dtype=torch.bfloat16)
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x))


def test_a_call_that_needs_gradients_gets_them():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8).requires_grad_(False)
    packed = PackedLinear(linear)
    x = torch.randn(4, 16, requires_grad=True)
    packed(x).sum().backward()
    expected = torch.randn(4, 16, requires_grad=True)
    with torch.no_grad():
        expected.copy_(x)
    linear(expected).sum().backward()
    torch.testing.assert_close(x.grad, expected.grad)


def test_pack_linears_keeps_names_ties_and_outputs_and_lora_still_matches_peft(tiny_spec, tmp_path):
    base = tiny_llama(tie_word_embeddings=True)
    packed = copy.deepcopy(base)
    count = pack_linears(packed)
    assert count == sum(type(m) is nn.Linear for m in base.modules())  # every linear, the LM head too
    assert [n for n, _ in packed.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert packed.lm_head.weight is packed.model.embed_tokens.weight
    ids = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).logits, base(ids).logits, rtol=1e-5, atol=1e-5)
    layers = LoraLayers(packed, tiny_spec)  # wraps the packed q_proj/v_proj
    assert isinstance(layers.layers["q_proj"][0].base, JoinedLinear)  # q/k/v: one product
    adapters = [random_adapter(tiny_spec, seed) for seed in (1, 2, 3)]
    A, B = stacked(adapters)
    with torch.inference_mode(), layers.applied(A, B, adapters[0].scaling):
        batched = packed(ids).logits
    assert_rows_match_peft(batched, base, adapters, ids, tmp_path)
    assert pack_linears(packed) == 0  # already packed: nothing left to replace


class Block(nn.Module):
    """An attention block's projections: q/k/v read one input, o_proj another."""

    def __init__(self, bias: bool):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (
            nn.Linear(32, 48, bias),
            nn.Linear(32, 16, bias),
            nn.Linear(32, 16, bias),
        )
        self.o_proj = nn.Linear(48, 32, bias)


@pytest.mark.parametrize("bias", [True, False])
def test_siblings_that_read_one_input_are_one_product_and_each_gets_its_own_columns(bias):
    torch.manual_seed(0)
    plain = Block(bias)
    joined = copy.deepcopy(plain)
    assert pack_linears(joined) == 4
    assert all(isinstance(getattr(joined, n), JoinedLinear) for n in ("q_proj", "k_proj", "v_proj"))
    assert type(joined.o_proj) is PackedLinear  # same parent, another input: not joined
    assert dict(joined.named_parameters()).keys() == dict(plain.named_parameters()).keys()
    x, other = torch.randn(5, 7, 32), torch.randn(5, 7, 32)
    with torch.inference_mode():
        for name in ("q_proj", "k_proj", "v_proj"):  # in order, all from one product
            torch.testing.assert_close(
                getattr(joined, name)(x), getattr(plain, name)(x), rtol=1e-5, atol=1e-5
            )
        # out of order, and a sibling called with another input: still each its own product of its input
        torch.testing.assert_close(joined.v_proj(x), plain.v_proj(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(joined.q_proj(other), plain.q_proj(other), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(joined.k_proj(x), plain.k_proj(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(joined.k_proj(other), plain.k_proj(other), rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    joined.q_proj(x).sum().backward()  # a call that needs gradients computes its own product
    torch.testing.assert_close(x.grad, plain.q_proj.weight.sum(0).expand(5, 7, 32), rtol=1e-5, atol=1e-5)


def test_siblings_unlike_in_bias_or_incomplete_are_packed_one_by_one():
    block = Block(bias=True)
    block.k_proj = nn.Linear(32, 16, bias=False)  # now unlike
    pack_linears(block)
    assert {type(m) for m in (block.q_proj, block.k_proj, block.v_proj)} == {PackedLinear}
    lone = nn.Module()
    lone.q_proj, lone.v_proj = nn.Linear(8, 8), nn.Linear(8, 4)  # no k_proj: no set to join
    pack_linears(lone)
    assert type(lone.q_proj) is PackedLinear and type(lone.v_proj) is PackedLinear
