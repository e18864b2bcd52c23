"""The embedder's transformer on ONNX Runtime (``hypernet.onnx_graph``): PyTorch's vectors, sooner.

Only the sentence-transformers model's first module (the Hugging Face transformer) is exported; its
pooling and normalisation modules still run in PyTorch, so every pooling mode behaves as before. For
all-MiniLM-L6-v2 on our 2-core CPU an embed took 0.57x a bare ``encode`` (``bench.generate``), its
vectors equal to PyTorch's to 1e-5.
"""

import inspect
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from hypernet.onnx_graph import cached_session, content_key

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _TokenEmbeddings(torch.nn.Module):
    """The transformer with positional inputs and one output, as the exporter wants it."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)), return_dict=True).last_hidden_state


class OnnxTransformer:
    """Token embeddings of a sentence-transformers model's first module, computed by ONNX Runtime."""

    def __init__(self, model: SentenceTransformer, cache_dir: Path):
        transformer = model[0].auto_model
        accepted = inspect.signature(transformer.forward).parameters
        # two lengths, so the traced path is the one that pads and masks (it is also right unpadded)
        sample = model.preprocess(["An example task description.", "A longer example of a task description."])
        self.names = tuple(n for n in INPUTS if n in sample and n in accepted)
        key = content_key(transformer, transformer.config.to_dict())
        axes = {n: {0: "batch", 1: "tokens"} for n in (*self.names, "token_embeddings")}
        self.session = cached_session(
            _TokenEmbeddings(transformer, self.names),
            {n: sample[n] for n in self.names},
            ["token_embeddings"],
            axes,
            cache_dir / "onnx" / f"embedder-{key}.onnx",
        )

    def __call__(self, features: dict) -> torch.Tensor:
        """``features`` as ``SentenceTransformer.preprocess`` makes them → token embeddings [n, t, d]."""
        feeds = {n: features[n].numpy().astype(np.int64, copy=False) for n in self.names}
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(out)
