"""Descriptions → LoRA adapters: the embedder and the hypernetwork, timed.

One call embeds a batch of descriptions and runs one hypernetwork forward pass for all of them.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hypernet.adapter import LoraAdapter
from hypernet.checkpoint import CheckpointConfig, EmbedderSpec, load_checkpoint, read_config
from hypernet.embed import Embedder, normalize_description
from hypernet.model import HyperLoRA


@dataclass
class Timings:
    embed_ms: float
    hypernet_ms: float
    total_ms: float


class AdapterGenerator:
    """A loaded checkpoint and its embedder."""

    def __init__(self, model: HyperLoRA, config: CheckpointConfig, embedder: Embedder, path: Path):
        self.model, self.config, self.embedder, self.path = model, config, embedder, path

    @classmethod
    def load(
        cls,
        checkpoint: Path,
        embedder: Embedder | None = None,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> "AdapterGenerator":
        """Load ``checkpoint``; with no ``embedder`` given, the one the checkpoint names is loaded."""
        recorded = read_config(checkpoint).embedder
        embedder = embedder or Embedder(
            recorded.name, recorded.pooling, device, trust_remote_code=trust_remote_code
        )
        spec = EmbedderSpec(name=embedder.name, dim=embedder.dim, pooling=embedder.pooling)
        model, config = load_checkpoint(checkpoint, device=device, embedder=spec)
        return cls(model, config, embedder, checkpoint)

    @torch.inference_mode()
    def generate(self, descriptions: list[str]) -> tuple[list[LoraAdapter], Timings]:
        """One adapter per description, from one embedder call and one hypernetwork pass."""
        start = time.perf_counter()
        embedding = self.embedder.embed(descriptions)
        embedded = time.perf_counter()
        A, B = self.model(embedding.vectors)
        done = time.perf_counter()
        hyper, many = self.config.hypernet, len(descriptions) > 1
        adapters = []
        for row, (text, truncated) in enumerate(zip(descriptions, embedding.truncated, strict=True)):
            metadata = {
                "checkpoint": self.config.id,
                "checkpoint_status": self.config.status,
                "checkpoint_trained": str(self.config.trained).lower(),
                "base_fingerprint": self.config.base.fingerprint,
                "embedder": self.embedder.name,
                "description_truncated": str(truncated).lower(),
            }
            adapters.append(
                LoraAdapter(
                    A={m: t[row].clone() if many else t[row] for m, t in A.items()},
                    B={m: t[row].clone() if many else t[row] for m, t in B.items()},
                    rank=hyper.rank,
                    alpha=hyper.alpha,
                    use_rslora=hyper.use_rslora,
                    base=self.config.base,
                    description=normalize_description(text),
                    metadata=metadata,
                )
            )
        ms = 1000.0
        return adapters, Timings((embedded - start) * ms, (done - embedded) * ms, (done - start) * ms)
