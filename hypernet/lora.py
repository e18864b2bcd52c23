"""Batched per-row LoRA: the one mechanism that training, evaluation and serving share.

Every target linear of the base is wrapped once; the wrapper computes

    y = W x + s · B[row] (A[row] x)

with A [batch, r, in] and B [batch, out, r] (or batch 1, shared by all rows) gathered per batch row,
as two batched matmuls. Gradients flow into A and B, so the same wrapper trains the hypernetwork.

Target linears of one layer under one parent (q_proj and v_proj of an attention block) form a group:
the first of them to see an input computes the down-projection of all of them at once, ``x [A_1; A_2]ᵀ``,
and the others take their part when their input is the same tensor. One product of rank 2r instead of two
of rank r: in a prefill through SmolLM2 each small product costs far more than its arithmetic.

The low-rank products may run in a dtype of their own (``LoraLayers(dtype=...)``, ``products_dtype``): on a
CPU, bfloat16 batched products of a decode step's small shapes cost 2–3x float32's, while the base's big
products are the ones bfloat16 speeds up.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import nn

from hypernet.base import BaseSpec


def products_dtype(base_dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype for serving's low-rank products (and the slots that hold A and B): float32 on a CPU, where
    a half-precision batched product of a decode step's shapes is the slow one (a LoRA'd layer of SmolLM2
    at 8 rows: 145 µs in bfloat16 against 58 µs converting to float32 and back); the base's dtype
    elsewhere."""
    return torch.float32 if torch.device(device).type == "cpu" else base_dtype


class LoraGroup:
    """Wrapped linears of one layer under one parent, whose down-projections can be one product."""

    def __init__(self, members: list["BatchedLoraLinear"]):
        self.members = members
        self.A: torch.Tensor | None = None  # every member's A joined along the rank: [batch or 1, Σr, in]
        self._input: torch.Tensor | None = None  # the input the last joint product was computed for
        self._low: torch.Tensor | None = None

    def join(self, A: torch.Tensor | None) -> None:
        """Use ``A`` (the members' A, joined in member order; each member's ``ranks`` say where its own
        are), or nothing (None: each computes its own)."""
        self.A, self._input, self._low = A, None, None

    def low(self, member: "BatchedLoraLinear", x: torch.Tensor) -> torch.Tensor:
        """``x Aᵀ`` for ``member``: from the joint product of ``x`` (computed now if it is not this
        input's), cut to the member's ranks."""
        if self._input is not x:
            h = member.rows_of(x)
            self._low = product(h, self.A.to(h.dtype).transpose(-1, -2))
            self._input = x
        return self._low[..., member.ranks]


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``, as ``torch.bmm`` where the batches match: at a decode step's shapes ``@`` cost about
    twice as much for its broadcasting logic."""
    return torch.bmm(a, b) if a.dim() == b.dim() == 3 and a.shape[0] == b.shape[0] else a @ b


class BatchedLoraLinear(nn.Module):
    """A frozen linear plus an optional per-row low-rank update."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.A: torch.Tensor | None = None  # [batch or 1, r, in]
        self.B: torch.Tensor | None = None  # [batch or 1, out, r]
        self.rows: torch.Tensor | None = None  # the batch rows A/B belong to; None = every row
        self.scaling = 0.0
        self.group: LoraGroup | None = None  # set by ``LoraLayers``: partners under the same parent
        self.ranks = slice(None)  # where this linear's ranks lie in its group's joined A
        self.dtype: torch.dtype | None = None  # the low-rank products' dtype; None = the input's

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def use(
        self,
        A: torch.Tensor | None,
        B: torch.Tensor | None,
        scaling: float,
        rows: torch.Tensor | None,
        ranks: slice,
    ) -> None:
        """Point at per-row weights (None: none), straight into the instance's dict: ``nn.Module``'s
        ``__setattr__`` looks through parameters, buffers and submodules first, and the engine sets these
        on every wrapped linear at every decode step."""
        self.__dict__.update(A=A, B=B, scaling=scaling, rows=rows, ranks=ranks)

    def rows_of(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the low-rank product: [rows, tokens, in] in its dtype, adapted rows only."""
        h = x[:, None] if x.dim() == 2 else x  # [batch, in] is one token per row
        if self.rows is not None:  # rows without an adapter skip the low-rank product
            h = h.index_select(0, self.rows)
        return h.to(self.dtype or x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.A is None or self.B is None:
            return y
        dtype = self.dtype or x.dtype
        if self.group is not None and self.group.A is not None:
            low = self.group.low(self, x)  # [rows, tokens, r]
        else:
            low = product(self.rows_of(x), self.A.to(dtype).transpose(-1, -2))
        Bt = self.B.to(dtype).transpose(-1, -2)  # contiguous where B is a view of a stored Bᵀ (the slots)
        if self.rows is None and Bt.shape[0] == low.shape[0]:
            # y + s * low @ Bᵀ as one fused kernel: no separate scale and add over the output
            out = (y[:, None] if x.dim() == 2 else y).to(dtype)
            return torch.baddbmm(out, low, Bt, alpha=self.scaling).to(y.dtype).view_as(y)
        delta = (self.scaling * product(low, Bt)).to(y.dtype)
        if x.dim() == 2:
            delta = delta[:, 0]
        return y + delta if self.rows is None else y.index_add(0, self.rows, delta)


@dataclass
class _Views:
    """What ``LoraLayers.set`` gives the wrapped linears for one set of tensors."""

    modules: list[tuple[torch.Tensor, torch.Tensor, slice]]  # per linear (``_modules``): A, B, its ranks
    joined: list[torch.Tensor]  # per group: its members' A joined along the rank


class LoraLayers:
    """The wrapped target linears of one base model, by module kind and layer."""

    def __init__(self, model: nn.Module, base: BaseSpec, dtype: torch.dtype | None = None):
        """``dtype``: the low-rank products' (None: each input's, as in training)."""
        self.base = base
        self.layers: dict[str, list[BatchedLoraLinear]] = {}
        parents: dict[tuple[int, str], list[str]] = {}  # (layer, parent path) → the kinds under it
        for kind, spec in base.modules.items():
            wrapped = []
            for layer in range(base.num_layers):
                parent_path, _, leaf = spec.at(layer).rpartition(".")
                parent = model.get_submodule(parent_path)
                module = getattr(parent, leaf)
                if not isinstance(module, BatchedLoraLinear):
                    module = BatchedLoraLinear(module)
                    setattr(parent, leaf, module)
                module.group, module.dtype = None, dtype
                wrapped.append(module)
                parents.setdefault((layer, parent_path), []).append(kind)
            self.layers[kind] = wrapped
        # groups: (layer, kinds); a kind's input is checked at run time, so o_proj beside q_proj is safe
        self.groups: list[tuple[int, list[str], LoraGroup]] = []
        for (layer, _), kinds in parents.items():
            if len(kinds) > 1:
                group = LoraGroup([self.layers[k][layer] for k in kinds])
                for member in group.members:
                    member.group = group
                self.groups.append((layer, kinds, group))
        # the per-layer views of the last two sets of tensors without gradients, with what they were made
        # from: the engine sets the same tensors at every decode step (and a step's again after a prefill
        # between its layers); making the views again and setting them through nn.Module's __setattr__
        # cost 0.55 ms a step on SmolLM2 (set and clear), against 0.04 ms now
        self._views: list[tuple[tuple, _Views]] = []
        self._modules = [module for layers in self.layers.values() for module in layers]

    def set(
        self,
        A: dict[str, torch.Tensor],
        B: dict[str, torch.Tensor],
        scaling: float,
        rows: torch.Tensor | None = None,
    ) -> None:
        """Use per-row adapters: A[kind] [n, layers, r, in], B[kind] [n, layers, out, r], for batch rows
        ``rows`` (n of them; None = the whole batch, in order). Other rows run the base model alone."""
        sources = (*(A[k] for k in self.base.modules), *(B[k] for k in self.base.modules), rows)
        views = next(
            (
                v
                for made_from, v in self._views
                if all(a is b for a, b in zip(made_from, sources, strict=True))
            ),
            None,
        )
        if views is None:
            views = self._make_views(A, B)
            if not any(t is not None and t.requires_grad for t in sources):  # never keep a graph alive
                self._views = [(sources, views), *self._views[:1]]
        for module, (a, b, ranks) in zip(self._modules, views.modules, strict=True):
            module.use(a, b, scaling, rows, ranks)
        for (_, _, group), joined in zip(self.groups, views.joined, strict=True):
            group.join(joined)

    def _make_views(self, A: dict[str, torch.Tensor], B: dict[str, torch.Tensor]) -> "_Views":
        ranks: dict[int, slice] = {}  # group members' places in their group's joined A, by id
        for _, kinds, group in self.groups:
            ends = accumulate(A[k].shape[-2] for k in kinds)
            for kind, member, end in zip(kinds, group.members, ends, strict=True):
                ranks[id(member)] = slice(end - A[kind].shape[-2], end)
        modules = [
            (A[kind][:, layer], B[kind][:, layer], ranks.get(id(module), slice(None)))
            for kind, layers in self.layers.items()
            for layer, module in enumerate(layers)
        ]
        joined = [torch.cat([A[k][:, layer] for k in kinds], dim=-2) for layer, kinds, _ in self.groups]
        return _Views(modules, joined)

    def clear(self) -> None:
        for module in self._modules:
            module.use(None, None, 0.0, None, slice(None))
        for _, _, group in self.groups:
            group.join(None)

    @contextmanager
    def applied(
        self, A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], scaling: float
    ) -> Iterator[None]:
        self.set(A, B, scaling)
        try:
            yield
        finally:
            self.clear()
