"""The decode attention that packs grouped-query heads: transformers' results, with a mask or without."""

import copy

import pytest
import torch
from torch.nn import functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hypernet import attention
from hypernet.attention import NAME, packed_decode_attention, use_packed_decode_attention
from tests.conftest import tiny_llama


class Heads(torch.nn.Module):
    num_key_value_groups = 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_one_query_token_matches_transformers_sdpa(dtype, masked):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 9, 1, 16, generator=gen).to(dtype)
    k, v = (torch.randn(4, 3, 21, 16, generator=gen).to(dtype) for _ in range(2))
    mask = torch.ones(4, 1, 1, 21, dtype=torch.bool)
    mask[0, ..., :5] = False
    mask = mask if masked else None
    ours, _ = packed_decode_attention(Heads(), q, k, v, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(Heads(), q, k, v, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (4, 1, 9, 16)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(ours, theirs, **tolerance)


def test_the_packed_call_serves_the_unmasked_decode_step(monkeypatch):
    calls, sdpa = [], F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        calls.append((tuple(query.shape), kwargs.get("enable_gqa", False)))
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    q, k, v = torch.randn(2, 9, 1, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    packed_decode_attention(Heads(), q, k, v, None)
    assert calls == [((2, 3, 3, 8), False)]  # heads grouped by key/value head, no enable_gqa


def test_a_switched_model_generates_what_transformers_does():
    base = tiny_llama()
    ours = copy.deepcopy(base)
    assert use_packed_decode_attention(ours)
    assert ours.config._attn_implementation == NAME
    ids = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # one left-padded row: the masked path too
    for attention_mask in (None, mask):
        kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "output_scores": True}
        kwargs |= {"attention_mask": attention_mask, "return_dict_in_generate": True}
        with torch.inference_mode():
            expected, got = base.generate(ids, **kwargs), ours.generate(ids, **kwargs)
        assert torch.equal(expected.sequences, got.sequences)
        for a, b in zip(expected.scores, got.scores, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_model_without_sdpa_is_left_alone():
    model = tiny_llama()
    model.set_attn_implementation("eager")
    assert not use_packed_decode_attention(model)
    assert model.config._attn_implementation == "eager"
