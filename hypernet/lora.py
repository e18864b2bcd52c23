"""Batched per-row LoRA: the one mechanism that training, evaluation and serving share.

Every target linear of the base is wrapped once; the wrapper computes

    y = W x + s · B[row] (A[row] x)

with A [batch, r, in] and B [batch, out, r] (or batch 1, shared by all rows) gathered per batch row,
as two batched matmuls. Gradients flow into A and B, so the same wrapper trains the hypernetwork.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hypernet.base import BaseSpec


class BatchedLoraLinear(nn.Module):
    """A frozen linear plus an optional per-row low-rank update."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.A: torch.Tensor | None = None  # [batch or 1, r, in]
        self.B: torch.Tensor | None = None  # [batch or 1, out, r]
        self.rows: torch.Tensor | None = None  # the batch rows A/B belong to; None = every row
        self.scaling = 0.0

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.A is None or self.B is None:
            return y
        A, B = self.A.to(x.dtype), self.B.to(x.dtype)
        h = x[:, None] if x.dim() == 2 else x  # [batch, in] is one token per row
        if self.rows is not None:  # rows without an adapter skip the low-rank product
            h = h.index_select(0, self.rows)
        low = h @ A.transpose(-1, -2)  # [rows, tokens, r]
        if self.rows is None and B.shape[0] == low.shape[0]:
            # y + s * low @ B^T as one fused kernel: no separate scale and add over the output
            out = y[:, None] if x.dim() == 2 else y
            return torch.baddbmm(out, low, B.transpose(-1, -2), alpha=self.scaling).view_as(y)
        delta = self.scaling * (low @ B.transpose(-1, -2))
        if x.dim() == 2:
            delta = delta[:, 0]
        return y + delta if self.rows is None else y.index_add(0, self.rows, delta)


class LoraLayers:
    """The wrapped target linears of one base model, by module kind and layer."""

    def __init__(self, model: nn.Module, base: BaseSpec):
        self.base = base
        self.layers: dict[str, list[BatchedLoraLinear]] = {}
        for kind, spec in base.modules.items():
            wrapped = []
            for layer in range(base.num_layers):
                parent_path, _, leaf = spec.at(layer).rpartition(".")
                parent = model.get_submodule(parent_path)
                module = getattr(parent, leaf)
                if not isinstance(module, BatchedLoraLinear):
                    module = BatchedLoraLinear(module)
                    setattr(parent, leaf, module)
                wrapped.append(module)
            self.layers[kind] = wrapped

    def set(
        self,
        A: dict[str, torch.Tensor],
        B: dict[str, torch.Tensor],
        scaling: float,
        rows: torch.Tensor | None = None,
    ) -> None:
        """Use per-row adapters: A[kind] [n, layers, r, in], B[kind] [n, layers, out, r], for batch rows
        ``rows`` (n of them; None = the whole batch, in order). Other rows run the base model alone."""
        for kind, modules in self.layers.items():
            for layer, module in enumerate(modules):
                module.A, module.B, module.scaling = A[kind][:, layer], B[kind][:, layer], scaling
                module.rows = rows

    def clear(self) -> None:
        for modules in self.layers.values():
            for module in modules:
                module.A = module.B = module.rows = None

    @contextmanager
    def applied(
        self, A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], scaling: float
    ) -> Iterator[None]:
        self.set(A, B, scaling)
        try:
            yield
        finally:
            self.clear()
