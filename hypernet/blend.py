"""Blends of task descriptions: one adapter for a weighted mix of tasks.

Two ways to mix, both exact about what they mix:

* ``embedding`` (default): the weighted mean of the descriptions' embeddings (rescaled to the weighted
  mean of their norms, the scale the hypernetwork was trained on) goes through one hypernetwork pass.
  The result is an ordinary rank-r adapter that fits every slot.
* ``weights``: the exact mix of the weight updates, ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ, as one LoRA of rank Σ rᵢ: the
  A matrices stacked, the B matrices stacked and each scaled by its weight, alpha set so the LoRA scale
  stays the checkpoint's. (Mixing A and B separately, as a lerp of adapter files does, mixes
  Σ wᵢBᵢ · Σ wⱼAⱼ, cross terms included: not ΔW mixing.)

A blend is normalised before anything else (each description normalised, duplicates merged, zero weights
dropped, weights scaled to sum to 1, parts sorted), so equal blends get equal ids; a blend of a single
description is that description.
"""

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch

from hypernet.adapter import LoraAdapter
from hypernet.embed import normalize_description
from hypernet.errors import T2LError

Mode = Literal["embedding", "weights"]
MODES = ("embedding", "weights")
MAX_PARTS = 8


@dataclass(frozen=True)
class Blend:
    parts: tuple[tuple[str, float], ...]  # (normalised description, weight); weights sum to 1
    mode: Mode = "embedding"

    @classmethod
    def of(cls, parts: Iterable[tuple[str, float]], mode: str = "embedding") -> "Blend":
        if mode not in MODES:
            raise T2LError(f"blend mode {mode!r} is not one of {', '.join(MODES)}")
        merged: dict[str, float] = {}
        for text, weight in parts:
            if not math.isfinite(weight) or weight < 0:
                raise T2LError(f"blend weight {weight} is not a finite number >= 0")
            key = normalize_description(text)
            merged[key] = merged.get(key, 0.0) + float(weight)
        if not merged:
            raise T2LError("a blend needs at least one description")
        if len(merged) > MAX_PARTS:
            raise T2LError(f"a blend has {len(merged)} descriptions; the limit is {MAX_PARTS}")
        total = sum(merged.values())
        if total <= 0:
            raise T2LError("the blend's weights are all 0: give at least one a positive weight")
        kept = tuple(sorted((text, w / total) for text, w in merged.items() if w > 0))
        return cls(kept, mode)  # type: ignore[arg-type]

    @property
    def single(self) -> str | None:
        """The description, when the blend is just one (its adapter is then that description's)."""
        return self.parts[0][0] if len(self.parts) == 1 else None

    def key(self) -> str:
        """A canonical text of the blend, for its content-hash id (weights to 6 decimals)."""
        return json.dumps({"mode": self.mode, "parts": [[t, round(w, 6)] for t, w in self.parts]})

    def label(self) -> str:
        """A readable description of the blend, stored as the adapter's description."""
        mixed = " + ".join(f"{w:.2f} × {text}" for text, w in self.parts)
        return f"blend ({self.mode}): {mixed}"

    @property
    def texts(self) -> list[str]:
        return [t for t, _ in self.parts]

    @property
    def weights(self) -> torch.Tensor:
        return torch.tensor([w for _, w in self.parts])


def mix_embeddings(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean of ``vectors`` [n, dim], rescaled to the weighted mean of their norms: [1, dim]."""
    w = weights.to(vectors)
    mixed = (w[:, None] * vectors).sum(0, keepdim=True)
    norm = (w * vectors.norm(dim=1)).sum()
    return mixed * (norm / mixed.norm().clamp(min=1e-12))


def mix_weights(adapters: list[LoraAdapter], weights: torch.Tensor, description: str) -> LoraAdapter:
    """ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ as one LoRA of rank Σ rᵢ (every part made by the same checkpoint, so the
    same scale s): A stacked along the rank, B stacked and scaled by wᵢ, alpha keeping the scale s."""
    first = adapters[0]
    if any((a.rank, a.alpha, a.use_rslora) != (first.rank, first.alpha, first.use_rslora) for a in adapters):
        raise T2LError("a weights blend needs adapters of one rank and scale")
    rank = sum(a.rank for a in adapters)
    alpha = first.scaling * (math.sqrt(rank) if first.use_rslora else rank)
    A = {m: torch.cat([a.A[m] for a in adapters], dim=1) for m in first.A}
    B = {
        m: torch.cat([w * a.B[m] for a, w in zip(adapters, weights.tolist(), strict=True)], dim=2)
        for m in first.B
    }
    return replace(
        first, A=A, B=B, rank=rank, alpha=alpha, description=description, metadata=dict(first.metadata)
    )
