"""The T2L hypernetwork: a task embedding in, every layer's and module's LoRA A and B out.

Architecture as in the paper (the reference's "M" variant with a shared A/B head), written for one
batched pass:

    task  = LayerNorm(Linear(e))                                   [n, d/2]
    depth = LayerNorm(Embedding(layer)), kind = LayerNorm(Embedding(module))   [L, d/4], [M, d/4]
    x     = Res1(Mix(cat(task, depth, kind)))            [n, L, M, d]: all (description, layer, module)
    h     = Neck(Res2(x + LayerNorm(ab_emb[module, A|B])))        [n, L, M, 2, head_in]
    A, B  = head[module](h), cut to each matrix's shape, then  · scale + shift

Each module kind has one head shared by all layers; which layer and which of A/B it writes comes from
the learned embeddings. The only Python loop is over module kinds (their heads differ in width).

Initialisation follows LoRA: head weights are zero, ``shift_A`` holds a per-layer Kaiming-uniform A and
``shift_B`` zeros, so an untrained hypernetwork emits B = 0, an adapter that changes nothing.
"""

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

SIZES: dict[str, tuple[int, int]] = {"S": (64, 128), "M": (128, 512), "L": (256, 1024)}  # latent, head input


class HyperConfig(BaseModel):
    """Hyperparameters of the network and the shapes of what it writes."""

    embed_dim: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    target_modules: list[str] = Field(min_length=1)
    in_features: dict[str, int]
    out_features: dict[str, int]
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    use_rslora: bool = True
    size: Literal["S", "M", "L", "custom"] = "M"
    latent_size: int = Field(128, gt=0)
    head_in_size: int = Field(512, gt=0)
    head_bias: bool = False
    output_scale: bool = False  # z-scored outputs (reconstruction training): A = raw · scale + shift
    dropout: float = Field(0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> "HyperConfig":
        missing = [m for m in self.target_modules if m not in self.in_features or m not in self.out_features]
        if missing:
            raise ValueError(f"no in/out features given for target modules {missing}")
        if self.latent_size % 4:
            raise ValueError(f"latent_size must be a multiple of 4, got {self.latent_size}")
        return self

    @classmethod
    def sized(cls, size: str, **kwargs) -> "HyperConfig":
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
        latent, head_in = SIZES[size]
        return cls(size=size, latent_size=latent, head_in_size=head_in, **kwargs)

    @property
    def scaling(self) -> float:
        """The LoRA scale applied to B·A: alpha/sqrt(r) with rsLoRA, alpha/r without."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


class ResidualMLP(nn.Module):
    """x + SiLU(W2 · Dropout(SiLU(W1 · LayerNorm(x)))), then dropout."""

    def __init__(self, size: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.fc1 = nn.Linear(size, hidden)
        self.fc2 = nn.Linear(hidden, size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(nn.functional.silu(self.fc1(self.norm(x))))
        return x + self.drop(nn.functional.silu(self.fc2(h)))


class Mixer(nn.Module):
    """Mixes task, depth and module embeddings: Dropout, Linear, SiLU, Dropout, Linear, SiLU, Dropout."""

    def __init__(self, size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(size, 4 * size)
        self.fc2 = nn.Linear(4 * size, size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(nn.functional.silu(self.fc1(self.drop(x))))
        return self.drop(nn.functional.silu(self.fc2(x)))


class Neck(nn.Module):
    """LayerNorm → Linear → SiLU → Dropout → Linear → SiLU: the input of the heads."""

    def __init__(self, size: int, out: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.fc1 = nn.Linear(size, 4 * size)
        self.fc2 = nn.Linear(4 * size, out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(nn.functional.silu(self.fc1(self.norm(x))))
        return nn.functional.silu(self.fc2(h))


class HyperLoRA(nn.Module):
    """T2L hypernetwork: maps [n, embed_dim] to per-module A [n, L, r, in] and B [n, L, out, r]."""

    def __init__(self, config: HyperConfig):
        super().__init__()
        self.config = c = config
        d, quarter = c.latent_size, c.latent_size // 4
        self.task_proj = nn.Linear(c.embed_dim, d // 2)
        self.task_norm = nn.LayerNorm(d // 2)
        self.depth_emb = nn.Embedding(c.num_layers, quarter)
        self.depth_norm = nn.LayerNorm(quarter)
        self.module_emb = nn.Embedding(len(c.target_modules), quarter)
        self.module_norm = nn.LayerNorm(quarter)
        self.mix = Mixer(d, c.dropout)
        self.res1 = ResidualMLP(d, 4 * d, c.dropout)
        self.ab_emb = nn.Parameter(torch.randn(len(c.target_modules), 2, d))
        self.ab_norm = nn.LayerNorm(d)
        self.res2 = ResidualMLP(d, 4 * d, c.dropout)
        self.neck = Neck(d, c.head_in_size, c.dropout)
        self.heads = nn.ModuleDict()
        for m in c.target_modules:
            width = c.rank * max(c.in_features[m], c.out_features[m])
            self.heads[m] = nn.Linear(c.head_in_size, width, bias=c.head_bias)
            nn.init.zeros_(self.heads[m].weight)
            if c.head_bias:
                nn.init.zeros_(self.heads[m].bias)
        for m in c.target_modules:
            fan_in, fan_out = c.in_features[m], c.out_features[m]
            bound = 1 / math.sqrt(fan_in)  # LoRA's A init: kaiming_uniform(a=sqrt(5))
            self.register_buffer(
                f"shift_A_{m}", torch.empty(c.num_layers, c.rank, fan_in).uniform_(-bound, bound)
            )
            self.register_buffer(f"shift_B_{m}", torch.zeros(c.num_layers, fan_out, c.rank))
            if c.output_scale:
                self.register_buffer(f"scale_A_{m}", torch.ones(c.num_layers, c.rank, fan_in))
                self.register_buffer(f"scale_B_{m}", torch.ones(c.num_layers, fan_out, c.rank))

    def head_inputs(self, task_emb: torch.Tensor) -> torch.Tensor:
        """The trunk: [n, embed_dim] → [n, layers, modules, 2 (A|B), head_in]."""
        c = self.config
        n, layers, kinds = task_emb.shape[0], c.num_layers, len(c.target_modules)
        grid = (n, layers, kinds, -1)
        task = self.task_norm(self.task_proj(task_emb))[:, None, None, :].expand(grid)
        depth = self.depth_norm(self.depth_emb.weight)[None, :, None, :].expand(grid)
        kind = self.module_norm(self.module_emb.weight)[None, None, :, :].expand(grid)
        x = self.res1(self.mix(torch.cat([task, depth, kind], dim=-1)))
        ab = self.ab_norm(self.ab_emb)[None, None]  # [1, 1, modules, 2, d]
        return self.neck(self.res2(x.unsqueeze(-2) + ab))

    def _head(self, module: str, h: torch.Tensor, fan: int) -> torch.Tensor:
        """``heads[module](h)`` cut to ``fan`` of each rank row's width: only the output units a matrix
        uses are computed (the head is as wide as the module's larger side; v_proj's B uses a third)."""
        head, rank = self.heads[module], self.config.rank
        weight, bias = head.weight, head.bias
        if fan < weight.shape[0] // rank:
            weight = weight.view(rank, -1, weight.shape[1])[:, :fan].reshape(rank * fan, weight.shape[1])
            bias = bias.view(rank, -1)[:, :fan].reshape(-1) if bias is not None else None
        return nn.functional.linear(h, weight, bias)

    def forward(self, task_emb: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        c = self.config
        h = self.head_inputs(task_emb)
        n, layers = h.shape[:2]
        A, B = {}, {}
        for i, m in enumerate(c.target_modules):
            fan_in, fan_out = c.in_features[m], c.out_features[m]
            if fan_in == fan_out:  # A and B use the whole head: one product reads its weights once
                out = self.heads[m](h[:, :, i]).view(n, layers, 2, c.rank, fan_in)
                a, b = out[:, :, 0], out[:, :, 1].transpose(-1, -2)
            else:
                a = self._head(m, h[:, :, i, 0], fan_in).view(n, layers, c.rank, fan_in)
                b = self._head(m, h[:, :, i, 1], fan_out).view(n, layers, c.rank, fan_out).transpose(-1, -2)
            if c.output_scale:
                a, b = a * getattr(self, f"scale_A_{m}"), b * getattr(self, f"scale_B_{m}")
            A[m] = a + getattr(self, f"shift_A_{m}")
            B[m] = b + getattr(self, f"shift_B_{m}")
        return A, B
