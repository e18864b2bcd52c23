"""Linear layers whose weights are reordered once into oneDNN's blocked layout, for inference on a CPU.

A plain ``nn.Linear`` hands its row-major weight to the matrix-product library at every call, which reads it
in an order its kernels do not stream well. Reordered once (what vLLM-CPU and inductor's freezing pass do),
the same product at a decode step's few rows costs about half: on 2 cores, SmolLM2-135M's linears at batch
8 took 29–34 ms a step row-major against 17–18 ms reordered in bfloat16, 71–97 against 33 ms in float32
(README, Benchmarks). The reordered copy is made for a typical row count but serves any.

Inference only: the reordered product has no gradient, so a call that needs one (grad mode on and an input
or weight that requires it) falls back to the plain product; and the copy is taken when packing, so weights
changed later are not seen (the server's base never changes). The original ``weight`` stays (tied
embeddings, the hypernetwork's shapes, the fallback): packing adds one copy of the linear weights.

Sibling linears that read the same input (an attention block's q/k/v projections, an MLP's gate and up
projections) are joined: the first of them to see an input computes all of their outputs as one product of
their stacked weights, and the others take their columns of it when their input is that same tensor (the
identity ``hypernet.lora``'s groups use too). At a decode step's 8 rows on 2 cores one product for q/k/v took
65 µs against 97 for three, one for gate/up 118 against 178 (bfloat16, SmolLM2's shapes).
"""

import logging

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger("t2l.packed")

ROWS_HINT = 8  # rows the layout is chosen for: a decode step's batch; it serves any other count
# names of sibling linears that read the same input, where a parent has all of them (Llama-style blocks)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def packing_available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether this build and CPU can run reordered products of ``dtype`` on ``device``."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = nn.Linear(8, 8, bias=False, dtype=dtype)
        PackedLinear(probe)(torch.ones(1, 8, dtype=dtype))
    except (RuntimeError, AttributeError, NotImplementedError) as err:
        # e.g. float16 needs AVX-512 FP16 or AVX-NE-CONVERT; a build without oneDNN lacks the ops
        log.info("reordered linear weights unavailable for %s: %s", dtype, str(err).splitlines()[0])
        return False
    return True


class _ReorderedLinear(nn.Linear):
    """An ``nn.Linear`` that keeps another's parameters and computes, outside autograd, from a reordered
    copy of its weight (``_reordered``); a call that needs a gradient takes the plain product."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return F.linear(x, self.weight, self.bias)
        return self._reordered(x)

    def _reordered(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PackedLinear(_ReorderedLinear):
    """An ``nn.Linear`` (same parameters, same results up to summation order) computing with a reordered
    copy of its weight."""

    def __init__(self, linear: nn.Linear, rows_hint: int = ROWS_HINT):
        super().__init__(linear)
        # an opaque oneDNN tensor: kept off the module's buffers, which .to() and state_dict would touch
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)

    def _reordered(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


class JoinedProduct:
    """The reordered product of sibling linears' stacked weights, computed once per input and handed out
    by columns. The last output is kept until every sibling has taken its part (or the next input)."""

    def __init__(self, linears: list[nn.Linear], rows_hint: int):
        weight = torch.cat([linear.weight.detach() for linear in linears])
        has_bias = linears[0].bias is not None
        self.bias = torch.cat([linear.bias.detach() for linear in linears]) if has_bias else None
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
        self.members = len(linears)
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._left = 0  # siblings yet to take their part of ``_output``

    def output(self, x: torch.Tensor) -> torch.Tensor:
        if self._input is not x:
            self._output = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            self._input, self._left = x, self.members
        output = self._output
        self._left -= 1
        if not self._left:  # all taken: hold neither the input nor the output any longer
            self._input = self._output = None
        return output


class JoinedLinear(_ReorderedLinear):
    """One of several sibling ``nn.Linear`` (same parameters) whose outputs come from a shared
    ``JoinedProduct``: its own columns of it, a view."""

    def __init__(self, linear: nn.Linear, product: JoinedProduct, columns: slice):
        super().__init__(linear)
        self._product, self._columns = product, columns

    def _reordered(self, x: torch.Tensor) -> torch.Tensor:
        return self._product.output(x)[..., self._columns]


def _siblings(model: nn.Module) -> list[tuple[nn.Module, tuple[str, ...]]]:
    """(parent, names) of each set of ``SIBLINGS`` that a parent has as plain linears alike in input
    size, dtype, device and bias."""
    found = []
    for parent in model.modules():
        for names in SIBLINGS:
            linears = [getattr(parent, name, None) for name in names]
            if all(type(linear) is nn.Linear for linear in linears) and (
                len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None) for m in linears}) == 1
            ):
                found.append((parent, names))
    return found


def pack_linears(model: nn.Module, rows_hint: int = ROWS_HINT) -> int:
    """Replace every plain ``nn.Linear`` in ``model`` (wrapped ones included) by a ``PackedLinear``, or a
    ``JoinedLinear`` for ``SIBLINGS``, where this CPU supports its weight's dtype; returns how many were
    replaced (0 where none is supported)."""
    supported: dict[tuple[torch.dtype, torch.device], bool] = {}

    def packable(linear: nn.Linear) -> bool:
        key = (linear.weight.dtype, linear.weight.device)
        if key not in supported:
            supported[key] = packing_available(*key)
        return supported[key]

    replaced = 0
    for parent, names in _siblings(model):
        linears = [getattr(parent, name) for name in names]
        if packable(linears[0]):
            product = JoinedProduct(linears, rows_hint)
            start = 0
            for name, linear in zip(names, linears, strict=True):
                columns = slice(start, start + linear.out_features)
                setattr(parent, name, JoinedLinear(linear, product, columns))
                start = columns.stop
            replaced += len(names)
    for name, linear in [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]:
        if packable(linear):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, PackedLinear(linear, rows_hint))
            replaced += 1
    return replaced
