"""The embedder's transformer on ONNX Runtime: the same vectors as PyTorch, in less time on a CPU.

A description is one short sequence, and at that size PyTorch's eager execution spends most of the time
between operators; ONNX Runtime runs the same graph with fused kernels (about 2.4x faster for
all-MiniLM-L6-v2 here, vectors equal to 1e-6). Only the sentence-transformers model's first module (the
Hugging Face transformer) is exported; its pooling and normalisation modules still run in PyTorch, so
every pooling mode behaves exactly as before. The exported graph is cached under the cache folder, keyed
by a hash of the transformer's weights and config, so it is exported once per embedder, not per start.
"""

import inspect
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import xxhash
from sentence_transformers import SentenceTransformer

log = logging.getLogger("t2l.embed")
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _TokenEmbeddings(torch.nn.Module):
    """The transformer with positional inputs and one output, as the exporter wants it."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)), return_dict=True).last_hidden_state


def _key(transformer: torch.nn.Module) -> str:
    """Content hash of the weights and config the graph is made from, and of the exporter's version."""
    digest = xxhash.xxh3_128()
    digest.update(json.dumps(transformer.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(f"{torch.__version__} opset {OPSET}".encode())
    for name, tensor in sorted(transformer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class OnnxTransformer:
    """Token embeddings of a sentence-transformers model's first module, computed by ONNX Runtime."""

    def __init__(self, model: SentenceTransformer, cache_dir: Path, threads: int | None = None):
        import onnxruntime as ort

        transformer = model[0].auto_model
        accepted = inspect.signature(transformer.forward).parameters
        # two lengths, so the traced path is the one that pads and masks (it is also right unpadded)
        sample = model.preprocess(
            ["An example task description.", "Another, longer example of a task description."]
        )
        self.names = tuple(n for n in INPUTS if n in sample and n in accepted)
        path = cache_dir / "onnx" / f"{_key(transformer)}.onnx"
        if not path.is_file():
            self._export(transformer, sample, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle pool threads would spin on the cores the base model decodes on: they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def _export(self, transformer: torch.nn.Module, sample: dict, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        names = self.names
        axes = {n: {0: "batch", 1: "tokens"} for n in names}
        # the tracer warns about every Python-level branch of the model; the tests compare the vectors
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _TokenEmbeddings(transformer, names).eval(),
                tuple(sample[n] for n in names),
                str(staging),
                input_names=list(names),
                output_names=["token_embeddings"],
                dynamic_axes={**axes, "token_embeddings": {0: "batch", 1: "tokens"}},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript, and it handles BERT-style models
            )
        staging.replace(path)  # whole or absent, even with two processes exporting at once
        log.info("exported the embedder's transformer to %s", path)

    def __call__(self, features: dict) -> torch.Tensor:
        """``features`` as ``SentenceTransformer.preprocess`` makes them → token embeddings [n, t, d]."""
        feeds = {n: features[n].numpy().astype(np.int64, copy=False) for n in self.names}
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(out)
