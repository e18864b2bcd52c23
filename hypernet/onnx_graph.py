"""PyTorch modules run by ONNX Runtime, their graphs exported once and cached by content.

Generating an adapter is two small forward passes (the embedder's transformer over one short
description, then the hypernetwork), and at that size PyTorch's eager execution spends much of its time
between operators; ONNX Runtime runs the same graph with fused kernels and less overhead per operator.
A graph is exported on first use into the cache folder under a hash of the module's weights, buffers and
config, so a new checkpoint or embedder gets a graph of its own and a restart reuses the old one.
"""

import json
import logging
import os
import warnings
from pathlib import Path

import torch
import xxhash

log = logging.getLogger("t2l.onnx")
OPSET = 17
GRAPHS = 2  # bumped when a module's forward changes the graph it exports (2: the hypernet's cut heads)


def content_key(module: torch.nn.Module, config: object) -> str:
    """Hash of what a graph is made from: every weight and buffer, the config, the exporter's version
    and ``GRAPHS`` (the forward code's)."""
    digest = xxhash.xxh3_128()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(f"{torch.__version__} opset {OPSET} graphs {GRAPHS}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def cached_session(
    module: torch.nn.Module,
    sample: dict[str, torch.Tensor],
    outputs: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    path: Path,
):
    """An ``onnxruntime.InferenceSession`` for ``module`` (called with ``sample``'s tensors, positionally;
    ``dynamic_axes`` as ``torch.onnx.export`` takes them), exported to ``path`` first if not there."""
    import onnxruntime as ort

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        # the tracer warns about every Python-level branch of the model; the tests compare the outputs
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(),
                tuple(sample.values()),
                str(staging),
                input_names=list(sample),
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript, and it traces BERT-style models
            )
        staging.replace(path)  # whole or absent, even with two processes exporting at once
        log.info("exported %s to %s", type(module).__name__, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # pool threads spin while a run lasts (sleeping between its operators cost the embedder 10 against
    # 7.5 ms a description here) and stop when it ends: idle, they would spin on the cores the base
    # model decodes on
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
