"""A fixed bank of adapter slots resident beside the base model.

Slot 0 is the empty adapter (B = 0) for rows that use the base model alone; slots 1..K hold adapters.
Activating an adapter copies its tensors into a free or least-recently-used unpinned slot in place:
no module is created or deleted per request. A slot is pinned while a request uses it and is never
evicted then; a request whose adapter finds every slot pinned waits until one is released.
"""

import asyncio
import time

import numpy as np
import torch

from hypernet.adapter import LoraAdapter
from hypernet.base import BaseSpec
from server.metrics import Metrics

EMPTY = 0


NUMPY_DTYPES = (torch.float32, torch.float16, torch.float64)


def _float_values(src: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as a numpy array (bfloat16, which numpy lacks, widened to float32 exactly)."""
    if src.dtype == torch.bfloat16:
        return (src.detach().view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16).view(
            np.float32
        )
    return src.detach().numpy()


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Float values rounded to bfloat16 (to nearest, ties to even, as torch rounds), as int16 bit patterns."""
    bits = values.astype(np.float32, copy=False).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16).view(np.int16)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy in place, converting the dtype. On CPU through numpy: a single-threaded copy does not wait
    for torch's thread pool, which right after a forward pass made a 2 MB ``copy_`` take 7-30 ms
    instead of 0.2 ms."""
    cpu = dst.device.type == "cpu" and src.device.type == "cpu"
    readable = src.dtype in NUMPY_DTYPES or src.dtype == torch.bfloat16
    if cpu and readable and dst.dtype in NUMPY_DTYPES:
        dst.numpy()[...] = _float_values(src)
    elif cpu and readable and dst.dtype == torch.bfloat16:
        dst.view(torch.int16).numpy()[...] = _bfloat16_bits(_float_values(src))
    else:
        with torch.no_grad():
            dst.copy_(src)


def _zero(dst: torch.Tensor) -> None:
    """Zero in place; on CPU through numpy, for the same reason as ``_copy`` (and so that no torch
    thread pool starts on the event loop's thread, ``server.threads``)."""
    if dst.device.type == "cpu" and dst.dtype in NUMPY_DTYPES:
        dst.numpy()[...] = 0
    elif dst.device.type == "cpu" and dst.dtype == torch.bfloat16:
        dst.view(torch.int16).numpy()[...] = 0  # +0.0 is all zero bits
    else:
        with torch.no_grad():
            dst.zero_()


class SlotBank:
    def __init__(
        self,
        base: BaseSpec,
        rank: int,
        slots: int,
        device: str = "cpu",
        dtype=torch.float32,
        metrics: Metrics | None = None,
    ):
        self.size, self.rank = slots, rank
        self.metrics = metrics or Metrics()
        layers = base.num_layers
        # zero_() writes every page now, so the first activation of a slot pays no page faults
        self.A = {
            m: torch.empty(slots + 1, layers, rank, s.in_features, dtype=dtype, device=device).zero_()
            for m, s in base.modules.items()
        }
        self.B = {
            m: torch.empty(slots + 1, layers, s.out_features, rank, dtype=dtype, device=device).zero_()
            for m, s in base.modules.items()
        }
        self.owner: list[str | None] = [None] * (slots + 1)
        self.pins = [0] * (slots + 1)
        self.last_used = [0.0] * (slots + 1)
        self.activations_ms: list[float] = []
        self._changed = asyncio.Condition()

    def slot_of(self, adapter_id: str) -> int | None:
        return next((i for i in range(1, self.size + 1) if self.owner[i] == adapter_id), None)

    def _victim(self) -> int | None:
        free = [i for i in range(1, self.size + 1) if self.pins[i] == 0]
        return min(free, key=lambda i: (self.owner[i] is not None, self.last_used[i])) if free else None

    def _copy_in(self, slot: int, adapter: LoraAdapter) -> None:
        """Copy an adapter of rank r <= the bank's rank into the first r ranks; zero the rest (exact)."""
        start = time.perf_counter()
        r = adapter.rank
        for m in self.A:
            _copy(self.A[m][slot, :, :r], adapter.A[m])
            _copy(self.B[m][slot, :, :, :r], adapter.B[m])
            if r < self.rank:
                _zero(self.A[m][slot, :, r:])
                _zero(self.B[m][slot, :, :, r:])
        self.activations_ms.append((time.perf_counter() - start) * 1000)

    async def acquire(self, adapter_id: str, adapter: LoraAdapter) -> int:
        """Pin a slot holding ``adapter`` (loading it if needed) and return its index."""
        async with self._changed:
            while True:
                slot = self.slot_of(adapter_id)
                if slot is None:
                    slot = self._victim()
                    if slot is not None:
                        if self.owner[slot] is not None:
                            self.metrics.slot_evictions.inc()
                        self.owner[slot] = None  # half-written slots belong to nobody
                        self._copy_in(slot, adapter)
                        self.owner[slot] = adapter_id
                        self.metrics.slot_activations.inc()
                if slot is not None:
                    self.pins[slot] += 1
                    self.last_used[slot] = time.monotonic()
                    return slot
                await self._changed.wait()

    async def release(self, slot: int) -> None:
        if slot == EMPTY:
            return
        async with self._changed:
            self.pins[slot] -= 1
            self.last_used[slot] = time.monotonic()
            self._changed.notify_all()

    def evict(self, adapter_id: str) -> None:
        """Forget a deleted adapter's slot unless a running request still holds it."""
        slot = self.slot_of(adapter_id)
        if slot is not None and self.pins[slot] == 0:
            self.owner[slot] = None

    def gather(self, slots: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-row A [batch, layers, r, in] and B [batch, layers, out, r] for rows using ``slots``."""
        index = torch.tensor(slots, device=next(iter(self.A.values())).device)
        return {m: t.index_select(0, index) for m, t in self.A.items()}, {
            m: t.index_select(0, index) for m, t in self.B.items()
        }
