"""The in-process L1 tier: least recently used out first, bounded in count and in bytes."""

import torch

from hypernet.adapter import LoraAdapter
from server.store import L1Cache, Record


def record(spec, name: str) -> Record:
    A = {m: torch.zeros(spec.num_layers, 2, s.in_features) for m, s in spec.modules.items()}
    B = {m: torch.zeros(spec.num_layers, s.out_features, 2) for m, s in spec.modules.items()}
    return Record(name, LoraAdapter(A=A, B=B, rank=2, alpha=4.0, use_rslora=True, base=spec), created=0)


def test_count_bound_evicts_the_least_recently_used(tiny_spec):
    cache = L1Cache(max_items=2, max_bytes=10**9)
    for name in "abc":
        cache.put(record(tiny_spec, name))
        if name == "b":
            cache.get("a")  # a is now more recent than b
    assert {r.id for r in cache.records()} == {"a", "c"}


def test_byte_bound_and_accounting(tiny_spec):
    size = record(tiny_spec, "x").nbytes
    cache = L1Cache(max_items=100, max_bytes=int(2.5 * size))
    for name in "abcd":
        cache.put(record(tiny_spec, name))
    assert len(cache) == 2 and cache.nbytes == 2 * size
    cache.put(record(tiny_spec, "d"))  # replacing an entry does not count it twice
    assert cache.nbytes == 2 * size
    assert cache.pop("d") is not None and cache.nbytes == size and cache.pop("d") is None
