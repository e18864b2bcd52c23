"""LoRA baselines trained like T2L, on the same sampler, batches and budget.

A multi-task LoRA (one adapter for every training task) and an oracle LoRA (one adapter for one task)
are each a fixed A/B pair that ignores the description. Dropping ``FixedLoRA`` into the SFT trainer
in place of the hypernetwork trains it with the same data, steps, optimizer and per-row LoRA, so the
comparison with T2L differs in one thing only. The result is exported as a standard PEFT folder.
"""

import json
import math
from pathlib import Path

import torch
from torch import nn

from hypernet.adapter import LoraAdapter
from hypernet.base import BaseSpec
from hypernet.checkpoint import CheckpointConfig
from hypernet.errors import T2LError


class FixedLoRA(nn.Module):
    """One trainable LoRA, returned for every row whatever the description (LoRA's initialisation)."""

    reads_descriptions = False  # the trainer feeds it zeros instead of embedding descriptions

    def __init__(self, base: BaseSpec, rank: int):
        super().__init__()
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for m, spec in base.modules.items():
            bound = 1 / math.sqrt(spec.in_features)
            self.A[m] = nn.Parameter(
                torch.empty(base.num_layers, rank, spec.in_features).uniform_(-bound, bound)
            )
            self.B[m] = nn.Parameter(torch.zeros(base.num_layers, spec.out_features, rank))

    def forward(self, task_emb: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        rows = task_emb.shape[0]
        return (
            {m: a.unsqueeze(0).expand(rows, *a.shape) for m, a in self.A.items()},
            {m: b.unsqueeze(0).expand(rows, *b.shape) for m, b in self.B.items()},
        )


TRAINING_FILE = "training.json"  # the baseline's provenance beside its PEFT files, read when it continues


def load_fixed(folder: Path, base: BaseSpec, rank: int) -> tuple[FixedLoRA, dict]:
    """A baseline to go on training: the PEFT folder's A and B (cast to float32) and its provenance."""
    adapter = LoraAdapter.from_peft(folder, base)
    if adapter.rank != rank:
        raise T2LError(f"{folder} has rank {adapter.rank}, the checkpoint's adapters rank {rank}")
    model = FixedLoRA(base, rank)
    with torch.no_grad():
        for m in model.A:
            model.A[m].copy_(adapter.A[m].float())
            model.B[m].copy_(adapter.B[m].float())
    provenance = folder / TRAINING_FILE
    return model, json.loads(provenance.read_text()) if provenance.is_file() else {}


def export_peft(
    model: nn.Module, config: CheckpointConfig, state: Path, dtype: torch.dtype | None = None
) -> None:
    """The trained LoRA as a PEFT folder (in ``dtype`` when given), its provenance in the model card."""
    hyper = config.hypernet
    adapter = LoraAdapter(
        A={m: a.detach().to(dtype or a.dtype).cpu() for m, a in model.A.items()},
        B={m: b.detach().to(dtype or b.dtype).cpu() for m, b in model.B.items()},
        rank=hyper.rank,
        alpha=hyper.alpha,
        use_rslora=hyper.use_rslora,
        base=config.base,
        description=f"{config.training['status']} baseline (no description)",
        metadata={k: str(v) for k, v in config.training.items() if k != "sft"},
    )
    adapter.save_peft(state / "adapter")
    (state / "adapter" / TRAINING_FILE).write_text(json.dumps(config.training, indent=2, default=str) + "\n")
