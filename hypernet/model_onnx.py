"""The hypernetwork's forward pass on ONNX Runtime (``hypernet.onnx_graph``), for generating adapters
on a CPU; training and evaluation run it on PyTorch."""

from pathlib import Path

import torch

from hypernet.model import HyperLoRA
from hypernet.onnx_graph import cached_session, content_key


class _Flat(torch.nn.Module):
    """The hypernetwork with its outputs as one tuple (A of every target module, then B), for export."""

    def __init__(self, model: HyperLoRA):
        super().__init__()
        self.model = model

    def forward(self, task_emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        A, B = self.model(task_emb)
        return (*A.values(), *B.values())


class OnnxHypernet:
    """The hypernetwork's forward pass on ONNX Runtime (``hypernet.onnx_graph``): the same A and B to
    1e-5 in 0.62x PyTorch's time on our 2-core CPU (``bench.generate``); the graph is keyed by the
    checkpoint's weights."""

    def __init__(self, model: HyperLoRA, cache_dir: Path):
        self.targets = list(model.config.target_modules)
        outputs = [f"{side}_{m}" for side in "AB" for m in self.targets]
        self.session = cached_session(
            _Flat(model),
            {"task_emb": torch.zeros(1, model.config.embed_dim)},
            outputs,
            {n: {0: "n"} for n in ("task_emb", *outputs)},
            cache_dir / "onnx" / f"hypernet-{content_key(model, model.config.model_dump())}.onnx",
        )

    def __call__(self, task_emb: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out = [torch.from_numpy(t) for t in self.session.run(None, {"task_emb": task_emb.numpy()})]
        k = len(self.targets)
        return dict(zip(self.targets, out[:k], strict=True)), dict(zip(self.targets, out[k:], strict=True))
