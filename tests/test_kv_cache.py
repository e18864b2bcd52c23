"""The engine's KV cache writes in place yet decodes exactly as transformers' DynamicCache does, through
running out of room, rows leaving (batch_select_indices) and tensors the engine replaces (a merge)."""

import pytest
import torch
from transformers import DynamicCache

from server import kv_cache
from server.kv_cache import roomy_cache
from tests.conftest import tiny_llama


@pytest.fixture
def small_room(monkeypatch):
    monkeypatch.setattr(kv_cache, "ROOM", 3)


def decode(model, cache, steps: int, select_at: int | None = None, replace_at: int | None = None):
    """Greedy decode of a 3-row batch; the logits of every step."""
    torch.manual_seed(1)
    ids = torch.randint(3, 120, (3, 5))
    out = model(input_ids=ids, cache=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    token = out.logits[:, -1].argmax(-1)
    for step in range(steps):
        if step == select_at:  # a row leaves, as Batch.keep does
            cache.batch_select_indices(torch.tensor([0, 2]))
            token = token[[0, 2]]
        if step == replace_at:  # the engine swaps in new tensors, as Batch.merge does
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
        out = model(input_ids=token[:, None], cache=cache, use_cache=True)
        logits.append(out.logits[:, -1])
        token = out.logits[:, -1].argmax(-1)
    return logits


@pytest.mark.parametrize("select_at, replace_at", [(None, None), (4, None), (None, 5), (2, 7)])
def test_roomy_cache_decodes_as_dynamic_cache(small_room, select_at, replace_at):
    model = tiny_llama()
    with torch.inference_mode():
        expected = decode(model, DynamicCache(), 12, select_at, replace_at)
        got = decode(model, roomy_cache(), 12, select_at, replace_at)
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=0, atol=0)


def test_a_layer_copies_only_when_its_room_runs_out(small_room):
    model = tiny_llama()
    cache = roomy_cache()
    buffers = []
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), cache=cache, use_cache=True)
        for _ in range(9):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=token, cache=cache, use_cache=True)
            buffers.append(cache.layers[0]._keys.data_ptr())
    # room for 7 after the 4-token prefill, then for 8 + 3 = 11: new buffers at lengths 8 and 12 only
    changes = [i for i in range(1, len(buffers)) if buffers[i] != buffers[i - 1]]
    assert changes == [3, 7]
    assert cache.get_seq_length() == 13 and cache.layers[0].keys.shape[-2] == 13


@pytest.mark.parametrize("make", [roomy_cache, DynamicCache])
def test_joined_rows_are_right_aligned_with_zeros_before_and_the_next_step_writes_in_place(make):
    """``join`` gives exactly the left-padded concatenation; a RoomyLayer then has room, so the next
    decode step keeps its buffer."""
    model = tiny_llama()
    torch.manual_seed(2)
    with torch.inference_mode():
        mine, theirs = make(), make()
        model(input_ids=torch.randint(3, 120, (2, 5)), cache=mine, use_cache=True)
        model(input_ids=torch.randint(3, 120, (1, 9)), cache=theirs, use_cache=True)
        expected = [
            [
                torch.cat([torch.nn.functional.pad(a, (0, 0, 4, 0)), b])
                for a, b in ((m.keys, t.keys), (m.values, t.values))
            ]
            for m, t in zip(mine.layers, theirs.layers, strict=True)
        ]
        for m, t in zip(mine.layers, theirs.layers, strict=True):
            kv_cache.join(m, t, 9)
        for layer, (keys, values) in zip(mine.layers, expected, strict=True):
            torch.testing.assert_close(layer.keys, keys, rtol=0, atol=0)
            torch.testing.assert_close(layer.values, values, rtol=0, atol=0)
        before = mine.layers[0].keys.data_ptr()
        model(input_ids=torch.randint(3, 120, (3, 1)), cache=mine, use_cache=True)
    assert mine.get_seq_length() == 10
    if make is roomy_cache:
        assert mine.layers[0].keys.data_ptr() == before
