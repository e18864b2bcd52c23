"""A fixed bank of adapter slots resident beside the base model.

Slot 0 is the empty adapter (B = 0) for rows that use the base model alone; slots 1..K hold adapters.
Activating an adapter copies its tensors into a free or least-recently-used unpinned slot in place:
no module is created or deleted per request. A slot is pinned while a request uses it and is never
evicted then; a request whose adapter finds every slot pinned waits until one is released.
"""

import asyncio
import time
from collections.abc import Callable

import torch

from hypernet.adapter import LoraAdapter
from hypernet.base import BaseSpec
from server.metrics import Metrics

EMPTY = 0


SERIAL = 32000  # elements per torch call in a copy: under ATen's grain size (32768), so it runs serially


def _piecewise(op: Callable[..., object], dst: torch.Tensor, *src: torch.Tensor) -> None:
    """``op(dst, *src)`` in pieces of at most ``SERIAL`` elements along the leading dimensions. Below
    its grain size torch runs an op on the calling thread and enters no OpenMP region: on the event
    loop's thread that starts no OpenMP pool there (``server.threads``) and never waits for the
    engine's; right after a forward pass one parallel 2 MB ``copy_`` took 7-30 ms instead of 0.2 ms."""
    if dst.numel() <= SERIAL or dst.dim() == 0:
        op(dst, *src)
        return
    row = dst[0].numel()
    if row > SERIAL:
        for i in range(dst.shape[0]):
            _piecewise(op, dst[i], *(s[i] for s in src))
        return
    step = SERIAL // row
    for i in range(0, dst.shape[0], step):
        op(dst[i : i + step], *(s[i : i + step] for s in src))


@torch.no_grad()
def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy in place, converting the dtype (on CPU serially, ``_piecewise``)."""
    if dst.device.type == "cpu" and src.device.type == "cpu":
        _piecewise(torch.Tensor.copy_, dst, src)
    else:
        dst.copy_(src)


@torch.no_grad()
def _zero(dst: torch.Tensor) -> None:
    """Zero in place (on CPU serially, ``_piecewise``)."""
    if dst.device.type == "cpu":
        _piecewise(torch.Tensor.zero_, dst)
    else:
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
        # B is kept transposed ([.., rank, out], contiguous): the engine's product takes Bᵀ, and a batched
        # product of a contiguous Bᵀ took half the time of a transposed view's at a decode step's shapes
        self.Bt = {
            m: torch.empty(slots + 1, layers, rank, s.out_features, dtype=dtype, device=device).zero_()
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
            _copy(self.Bt[m][slot, :, :r], adapter.B[m].transpose(-1, -2))
            if r < self.rank:
                _zero(self.A[m][slot, :, r:])
                _zero(self.Bt[m][slot, :, r:])
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
        """Per-row A [batch, layers, r, in] and B [batch, layers, out, r] for rows using ``slots`` (B a
        transposed view of contiguous Bᵀ). Consecutive slots (a newcomer's prefill alone, most often) are
        views of the bank, no copy (one slot, caches cold: 0.15 ms copied, 0.04 ms as views). The rows'
        slots are pinned while they run, so no activation writes over them meanwhile."""
        first = slots[0] if slots else 0
        if slots == list(range(first, first + len(slots))):
            rows = slice(first, first + len(slots))
            return {m: t[rows] for m, t in self.A.items()}, {
                m: t[rows].transpose(-1, -2) for m, t in self.Bt.items()
            }
        index = torch.tensor(slots, device=next(iter(self.A.values())).device)
        return {m: t.index_select(0, index) for m, t in self.A.items()}, {
            m: t.index_select(0, index).transpose(-1, -2) for m, t in self.Bt.items()
        }
