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
"""

import logging

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger("t2l.packed")

ROWS_HINT = 8  # rows the layout is chosen for: a decode step's batch; it serves any other count


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


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same results up to summation order) computing with a reordered
    copy of its weight."""

    def __init__(self, linear: nn.Linear, rows_hint: int = ROWS_HINT):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)
        # an opaque oneDNN tensor: kept off the module's buffers, which .to() and state_dict would touch
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def pack_linears(model: nn.Module, rows_hint: int = ROWS_HINT) -> int:
    """Replace every plain ``nn.Linear`` in ``model`` (wrapped ones included) by a ``PackedLinear`` where
    this CPU supports its weight's dtype; returns how many were replaced (0 where none is supported)."""
    supported: dict[tuple[torch.dtype, torch.device], bool] = {}
    replaced = 0
    for name, linear in [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]:
        key = (linear.weight.dtype, linear.weight.device)
        if key not in supported:
            supported[key] = packing_available(*key)
        if supported[key]:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, PackedLinear(linear, rows_hint))
            replaced += 1
    return replaced
