"""Descriptions → LoRA adapters: the embedder and the hypernetwork, timed.

One call embeds a batch of descriptions and runs one hypernetwork forward pass for all of them.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hypernet.adapter import LoraAdapter
from hypernet.blend import Blend, mix_embeddings, mix_weights
from hypernet.checkpoint import CheckpointConfig, EmbedderSpec, load_checkpoint, read_config
from hypernet.embed import Embedder, normalize_description
from hypernet.model import HyperLoRA
from hypernet.model_onnx import OnnxHypernet
from hypernet.settings import Runtime

log = logging.getLogger("t2l.generator")


@dataclass
class Timings:
    embed_ms: float
    hypernet_ms: float
    total_ms: float


class AdapterGenerator:
    """A loaded checkpoint and its embedder."""

    def __init__(
        self,
        model: HyperLoRA,
        config: CheckpointConfig,
        embedder: Embedder,
        path: Path,
        runtime: Runtime = "torch",
        cache_dir: Path | None = None,
    ):
        self.model, self.config, self.embedder, self.path = model, config, embedder, path
        self.hypernet: HyperLoRA | OnnxHypernet = model
        self.runtime: Runtime = "torch"
        if runtime == "onnx" and cache_dir is not None and next(model.parameters()).device.type == "cpu":
            try:
                self.hypernet, self.runtime = OnnxHypernet(model, cache_dir), "onnx"
            except Exception as err:  # the hypernetwork is ours and exports; if not, PyTorch runs it
                log.warning("hypernetwork runs on PyTorch: ONNX export failed (%s)", err)

    @classmethod
    def load(
        cls,
        checkpoint: Path,
        embedder: Embedder | None = None,
        device: str = "cpu",
        trust_remote_code: bool = False,
        runtime: Runtime = "torch",
        cache_dir: Path | None = None,
    ) -> "AdapterGenerator":
        """Load ``checkpoint``; with no ``embedder`` given, the one the checkpoint names is loaded.
        ``runtime="onnx"`` runs the hypernetwork (and that embedder's transformer) on ONNX Runtime on a
        CPU, their graphs cached in ``cache_dir``."""
        recorded = read_config(checkpoint).embedder
        embedder = embedder or Embedder(
            recorded.name,
            recorded.pooling,
            device,
            trust_remote_code=trust_remote_code,
            runtime=runtime,
            cache_dir=cache_dir,
        )
        spec = EmbedderSpec(name=embedder.name, dim=embedder.dim, pooling=embedder.pooling)
        model, config = load_checkpoint(checkpoint, device=device, embedder=spec)
        return cls(model, config, embedder, checkpoint, runtime, cache_dir)

    @torch.inference_mode()
    def generate(self, descriptions: list[str]) -> tuple[list[LoraAdapter], Timings]:
        """One adapter per description, from one embedder call and one hypernetwork pass."""
        start = time.perf_counter()
        embedding = self.embedder.embed(descriptions)
        embedded = time.perf_counter()
        return self._adapters(descriptions, embedding.vectors, embedding.truncated, start, embedded)

    @torch.inference_mode()
    def generate_blend(self, blend: Blend) -> tuple[LoraAdapter, Timings]:
        """One adapter for a blend (``hypernet.blend``): its embeddings mixed then one hypernetwork pass,
        or each part's adapter made then their weight updates mixed exactly."""
        start = time.perf_counter()
        embedding = self.embedder.embed(blend.texts)
        embedded = time.perf_counter()
        label = blend.label()
        if blend.mode == "embedding":
            vectors = mix_embeddings(embedding.vectors, blend.weights)
            (adapter,), timings = self._adapters(
                [label], vectors, [any(embedding.truncated)], start, embedded
            )
        else:
            parts, timings = self._adapters(
                blend.texts, embedding.vectors, embedding.truncated, start, embedded
            )
            adapter = mix_weights(parts, blend.weights, label)
            adapter.metadata["description_truncated"] = str(any(embedding.truncated)).lower()
        adapter.description = label
        adapter.metadata["blend"] = blend.key()
        return adapter, timings

    def _adapters(
        self,
        descriptions: list[str],
        vectors: torch.Tensor,
        truncated: list[bool],
        start: float,
        embedded: float,
    ) -> tuple[list[LoraAdapter], Timings]:
        A, B = self.hypernet(vectors)
        done = time.perf_counter()
        hyper, many = self.config.hypernet, len(descriptions) > 1
        adapters = []
        for row, (text, cut) in enumerate(zip(descriptions, truncated, strict=True)):
            metadata = {
                "checkpoint": self.config.id,
                "checkpoint_status": self.config.status,
                "checkpoint_trained": str(self.config.trained).lower(),
                "base_fingerprint": self.config.base.fingerprint,
                "embedder": self.embedder.name,
                "description_truncated": str(cut).lower(),
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
