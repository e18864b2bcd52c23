"""Blends: normalisation and ids, the exact ΔW mix, the embedding mix, and both over HTTP."""

import httpx
import pytest
import torch

from hypernet.blend import Blend, mix_embeddings, mix_weights
from hypernet.errors import T2LError
from tests.server_harness import running_server
from tests.test_lora import random_adapter

SUMMARY = "Summarise the article in one sentence."
FRENCH = "Translate the text into French."


def delta_w(adapter, module: str, layer: int) -> torch.Tensor:
    return adapter.scaling * adapter.B[module][layer] @ adapter.A[module][layer]


def test_blends_normalise_so_equal_mixes_are_equal():
    a = Blend.of([(SUMMARY, 0.7), (FRENCH, 0.3)])
    b = Blend.of([(f"  {FRENCH} ", 3), (SUMMARY.rstrip("."), 7)])  # order, spacing, full stop, scale
    assert a == b and a.key() == b.key()
    assert Blend.of([(SUMMARY, 1), (SUMMARY, 2), (FRENCH, 0)]).single == SUMMARY
    assert Blend.of([(SUMMARY, 1), (FRENCH, 1)], "weights") != Blend.of([(SUMMARY, 1), (FRENCH, 1)])
    for parts, mode, message in [
        ([(SUMMARY, -1.0)], "embedding", ">= 0"),
        ([(SUMMARY, 0.0), (FRENCH, 0.0)], "embedding", "all 0"),
        ([(SUMMARY, float("nan"))], "embedding", "finite"),
        ([], "embedding", "at least one"),
        ([(SUMMARY, 1.0)], "lerp", "mode"),
    ]:
        with pytest.raises(T2LError, match=message):
            Blend.of(parts, mode)


def test_the_weights_mix_is_the_exact_mix_of_weight_updates(tiny_spec):
    parts = [random_adapter(tiny_spec, seed=s, rank=4) for s in (1, 2, 3)]
    weights = torch.tensor([0.5, 0.3, 0.2])
    mixed = mix_weights(parts, weights, "mix")
    assert mixed.rank == 12 and mixed.scaling == pytest.approx(parts[0].scaling)
    mixed.check_shapes()
    for module in tiny_spec.modules:
        for layer in range(tiny_spec.num_layers):
            want = sum(w * delta_w(a, module, layer) for a, w in zip(parts, weights.tolist(), strict=True))
            assert torch.allclose(delta_w(mixed, module, layer), want, atol=1e-6)
    # what mixing A and B separately gives is not that
    lerp_a = sum(w * a.A["q_proj"][0] for a, w in zip(parts, weights.tolist(), strict=True))
    lerp_b = sum(w * a.B["q_proj"][0] for a, w in zip(parts, weights.tolist(), strict=True))
    assert not torch.allclose(parts[0].scaling * lerp_b @ lerp_a, delta_w(mixed, "q_proj", 0), atol=1e-4)


def test_the_embedding_mix_is_the_weighted_mean_at_the_parts_scale():
    vectors = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    weights = torch.tensor([0.2, 0.3, 0.5])
    mixed = mix_embeddings(vectors, weights)
    assert mixed.shape == (1, 16) and mixed.norm().item() == pytest.approx(1.0, abs=1e-5)
    direction = (weights[:, None] * vectors).sum(0)
    assert torch.allclose(mixed[0] / mixed.norm(), direction / direction.norm(), atol=1e-6)
    assert torch.allclose(mix_embeddings(vectors[:1], torch.tensor([1.0])), vectors[:1], atol=1e-6)


def post(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/adapters", json=body, timeout=60)


def chat(server, task, **extra) -> httpx.Response:
    body = {"model": server.service.base_name, "messages": [{"role": "user", "content": "hello"}]}
    body |= {"max_tokens": 8, "temperature": 0, **extra}
    if task is not None:
        body["task_description"] = task
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def test_blends_over_http(server_settings):
    even = [{"description": SUMMARY, "weight": 1}, {"description": FRENCH, "weight": 1}]
    with running_server(server_settings()) as server:
        made = post(server, blend=even)
        assert made.status_code == 200, made.text
        body = made.json()
        assert body["rank"] == server.service.checkpoint.hypernet.rank and body["description"].startswith(
            "blend"
        )
        same = post(
            server, blend=[{"description": FRENCH, "weight": 5}, {"description": SUMMARY, "weight": 5}]
        )
        assert same.json()["id"] == body["id"] and same.json()["cached"] == "l1"
        alone = post(server, blend=[{"description": SUMMARY, "weight": 2}]).json()
        assert alone["id"] == post(server, description=SUMMARY).json()["id"]
        assert server.service.store.generations == 2  # the blend and the single description

        # in chat: the list, or {blend, mode}; the id is the stored blend's
        inline = chat(server, even)
        assert inline.status_code == 200 and inline.json()["adapter"]["id"] == body["id"]
        mixed = post(server, blend=even, mode="weights").json()
        assert mixed["rank"] == 2 * body["rank"] and mixed["id"] != body["id"]
        refused = chat(server, {"blend": even, "mode": "weights"})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "rank_too_large"

        for bad, param in [
            ({"blend": [{"description": SUMMARY, "weight": -1}]}, "blend.0.weight"),
            ({"blend": [{"description": SUMMARY, "weight": 0}]}, "blend"),
            ({"blend": [{"description": "  ", "weight": 1}]}, "blend[0].description"),
            ({"description": SUMMARY, "blend": even}, "blend"),
            ({}, "description"),
            ({"blend": even, "mode": "lerp"}, "mode"),
        ]:
            answer = post(server, **bad)
            assert answer.status_code == 422, (bad, answer.text)
            assert answer.json()["error"]["param"] == param, (bad, answer.json())

    # slots of rank 2r take the weights blend; a rank-r adapter in them (zero-padded) answers as before
    with running_server(server_settings(slot_rank=2 * body["rank"], slots=1)) as server:  # one slot: reused
        answered = chat(server, {"blend": even, "mode": "weights"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["adapter"]["id"] == mixed["id"]
        padded = chat(server, even).json()["choices"][0]["message"]["content"]
        assert padded == inline.json()["choices"][0]["message"]["content"]
