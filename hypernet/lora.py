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
        self.scaling = 0.0

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.A is None or self.B is None:
            return y
        A, B = self.A.to(x.dtype), self.B.to(x.dtype)
        if x.dim() == 2:  # [batch, in]: one token per row
            return y + self.scaling * ((x[:, None] @ A.transpose(-1, -2)) @ B.transpose(-1, -2))[:, 0]
        return y + self.scaling * ((x @ A.transpose(-1, -2)) @ B.transpose(-1, -2))


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

    def set(self, A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], scaling: float) -> None:
        """Use per-row adapters: A[kind] [batch, layers, r, in], B[kind] [batch, layers, out, r]."""
        for kind, modules in self.layers.items():
            for layer, module in enumerate(modules):
                module.A, module.B, module.scaling = A[kind][:, layer], B[kind][:, layer], scaling

    def clear(self) -> None:
        for modules in self.layers.values():
            for module in modules:
                module.A = module.B = None

    @contextmanager
    def applied(
        self, A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], scaling: float
    ) -> Iterator[None]:
        self.set(A, B, scaling)
        try:
            yield
        finally:
            self.clear()
