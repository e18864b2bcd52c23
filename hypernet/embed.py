"""Task descriptions → vectors, with a sentence-transformers model.

Vectors are unit-normalised and scaled by sqrt(dim), as the reference T2L does, so the hypernetwork sees
inputs of the same magnitude whichever embedder is used. A small LRU keeps recent descriptions' vectors:
the embedder is the costliest part of generating an adapter, and descriptions repeat.
"""

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

from hypernet.embed_onnx import OnnxTransformer
from hypernet.errors import T2LError
from hypernet.mirrors import resolve_embedder
from hypernet.settings import Pooling as PoolingMode
from hypernet.settings import Runtime

log = logging.getLogger("t2l.embed")


def normalize_description(text: str) -> str:
    """Collapse whitespace and end with a full stop, so trivially different spellings embed alike."""
    if not isinstance(text, str):
        raise T2LError("the task description must be a string")
    text = " ".join(text.split())
    if not text:
        raise T2LError("the task description is empty: describe the task in a sentence or two")
    return text + "." if text[-1].isalnum() else text


@dataclass
class Embedding:
    vectors: torch.Tensor  # [n, dim], float32
    truncated: list[bool]  # whether each description was cut to the embedder's maximum length


class Embedder:
    """A sentence-transformers model that embeds task descriptions."""

    def __init__(
        self,
        name: str,
        pooling: PoolingMode = "model",
        device: str = "cpu",
        cache_size: int = 1024,
        trust_remote_code: bool = False,
        runtime: Runtime = "torch",
        cache_dir: Path | None = None,
    ):
        """``runtime="onnx"`` runs the transformer on ONNX Runtime (CPU only; ``hypernet.embed_onnx``),
        its graph exported once into ``cache_dir``; where that cannot be done, PyTorch runs it."""
        self.name, self.pooling, self.device = name, pooling, device
        try:
            model = SentenceTransformer(
                resolve_embedder(name), device=device, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise T2LError(
                f"cannot load embedder {name!r}: not a local folder, and the Hugging Face Hub does not have "
                f"it or cannot be reached ({str(err).splitlines()[0][:160]})"
            ) from err
        if pooling != "model":
            dim = model.get_embedding_dimension()
            model = SentenceTransformer(modules=[model[0], Pooling(dim, pooling_mode=pooling)], device=device)
        self.model = model.eval()
        self.dim: int = model.get_embedding_dimension()
        self.max_tokens: int = model.max_seq_length
        self._cache: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.onnx = self._onnx(cache_dir) if runtime == "onnx" else None
        self.runtime: Runtime = "onnx" if self.onnx else "torch"

    def _onnx(self, cache_dir: Path | None) -> OnnxTransformer | None:
        if torch.device(self.device).type != "cpu" or cache_dir is None:
            log.info("embedder %s runs on PyTorch: ONNX Runtime is used on the CPU only", self.name)
            return None
        try:
            return OnnxTransformer(self.model, cache_dir)
        except Exception as err:  # an architecture the exporter cannot trace still embeds, on PyTorch
            log.warning("embedder %s runs on PyTorch: ONNX export failed (%s)", self.name, err)
            return None

    def _count_tokens(self, texts: list[str]) -> list[int]:
        return [
            len(ids)
            for ids in self.model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        ]

    @torch.inference_mode()
    def _embed_new(self, texts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        truncated = [n > self.max_tokens for n in self._count_tokens(texts)]
        if self.onnx is None:
            vectors = self.model.encode(
                texts, convert_to_tensor=True, batch_size=len(texts), show_progress_bar=False
            ).float()
        else:  # the transformer on ONNX Runtime, then the model's own pooling modules, as encode runs them
            features = self.model.preprocess(texts)
            features["token_embeddings"] = self.onnx(features)
            for i in range(1, len(self.model)):
                features = self.model[i](features)
            vectors = features["sentence_embedding"].float()
        vectors = torch.nn.functional.normalize(vectors, dim=-1) * self.dim**0.5
        return vectors, truncated

    def embed(self, descriptions: list[str]) -> Embedding:
        """Embed descriptions (normalised first); recent ones come from the cache."""
        texts = [normalize_description(d) for d in descriptions]
        with self._lock:
            cached = {t: self._cache[t] for t in texts if t in self._cache}
            for t in cached:
                self._cache.move_to_end(t)
        new = list(dict.fromkeys(t for t in texts if t not in cached))
        if new:
            vectors, truncated = self._embed_new(new)
            fresh = {t: (v, c) for t, v, c in zip(new, vectors, truncated, strict=True)}
            with self._lock:
                self._cache.update(fresh)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            cached |= fresh
        rows = [cached[t] for t in texts]
        return Embedding(torch.stack([v for v, _ in rows]).to(self.device), [c for _, c in rows])
