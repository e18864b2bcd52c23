"""Reconstruction training: the hypernetwork learns to reproduce a library of task LoRAs.

For a task in the library, a random one of its descriptions goes in and the task's trained LoRA is the
target; the loss is the mean squared error over every A and B entry. With ``z_score`` (the reference's
option) each entry is measured in units of its spread across the library: the hypernetwork's output
scale and shift are set to the library's per-entry standard deviation and mean, so its head predicts
z-scores while its output stays in LoRA units. The last tenth of each task's descriptions is held out
for validation.
"""

from pathlib import Path

import torch
from torch import nn

from hypernet.adapter import LoraAdapter
from hypernet.checkpoint import CheckpointConfig
from hypernet.data.sni import Task
from hypernet.embed import Embedder
from hypernet.errors import T2LError
from hypernet.model import HyperLoRA
from hypernet.train.loop import LoopConfig, Trainer
from hypernet.vector_cache import VectorCache


class ReconConfig(LoopConfig):
    z_score: bool = True


def with_output_scale(model: HyperLoRA, config: CheckpointConfig) -> tuple[HyperLoRA, CheckpointConfig]:
    """The same network with output scale buffers (needed for z-scored targets), weights carried over."""
    hyper = config.hypernet.model_copy(update={"output_scale": True})
    scaled = HyperLoRA(hyper)
    scaled.load_state_dict(model.state_dict(), strict=False)
    return scaled, config.model_copy(update={"hypernet": hyper})


def load_library(
    folder: Path, tasks: list[Task], config: CheckpointConfig
) -> tuple[list[Task], list[LoraAdapter]]:
    """Tasks with a PEFT LoRA in ``folder`` (at ``<task>/`` or ``<task>/adapter/``), and those LoRAs."""
    found, adapters = [], []
    for task in tasks:
        for candidate in (folder / task.name / "adapter", folder / task.name):
            if (candidate / "adapter_config.json").is_file():
                found.append(task)
                adapters.append(LoraAdapter.from_peft(candidate, config.base))
                break
    if not found:
        raise T2LError(
            f"no task LoRAs in {folder}: expected <task>/adapter_config.json (t2l train lora --task)"
        )
    return found, adapters


class ReconTrainer(Trainer):
    def __init__(
        self,
        hypernet: HyperLoRA,
        config: CheckpointConfig,
        embedder: Embedder,
        tasks: list[Task],
        library: list[LoraAdapter],
        cfg: ReconConfig,
        out: Path,
        vector_cache: Path | None = None,
    ):
        if cfg.z_score and not hypernet.config.output_scale:
            raise T2LError(
                "z-scored reconstruction needs a network with output scale (see with_output_scale)"
            )
        super().__init__(hypernet, config, cfg, out, status="recon")
        self.cfg: ReconConfig = cfg
        self.tasks = tasks
        device = next(hypernet.parameters()).device
        self.targets = {
            ab: {m: torch.stack([getattr(lib, ab)[m] for lib in library]).to(device) for m in library[0].A}
            for ab in ("A", "B")
        }
        self.spread = {ab: {m: torch.ones_like(t[0]) for m, t in d.items()} for ab, d in self.targets.items()}
        if cfg.z_score:
            with torch.no_grad():
                for ab, per_module in self.targets.items():
                    for m, t in per_module.items():
                        self.spread[ab][m] = t.std(0, unbiased=False).clamp_min(1e-6)
                        getattr(hypernet, f"scale_{ab}_{m}").copy_(self.spread[ab][m])
                        getattr(hypernet, f"shift_{ab}_{m}").copy_(t.mean(0))
        cache = VectorCache(vector_cache or out / "vectors.sqlite", embedder)
        self.emb = [cache.vectors(t.descriptions) for t in tasks]
        self.held_out = [max(1, len(t.descriptions) // 10) for t in tasks]

    def provenance(self) -> dict:
        return {"library": [t.name for t in self.tasks]}

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.rng.sample(range(len(self.tasks)), min(self.cfg.tasks_per_step, len(self.tasks)))
        rows, owners = [], []
        for i, t in enumerate(chosen):
            d = self.rng.randrange(len(self.tasks[t].descriptions) - self.held_out[t])
            if i % self.world == self.rank:
                rows.append(self.emb[t][d])
                owners.append(t)
        device = next(self.hypernet.parameters()).device
        return torch.stack(rows).to(device), torch.tensor(owners, device=device)

    def loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], model: nn.Module | None = None
    ) -> tuple[torch.Tensor, int]:
        embeddings, owners = batch
        A, B = (model or self.hypernet)(embeddings)
        total, count = embeddings.new_zeros(()), 0
        for ab, out in (("A", A), ("B", B)):
            for m, predicted in out.items():
                error = (predicted - self.targets[ab][m].index_select(0, owners)) / self.spread[ab][m]
                total = total + error.square().sum()
                count += error.numel()
        return total, count

    @torch.no_grad()
    def validate(self) -> float:
        """Mean squared (z-scored) error from each task's held-out descriptions."""
        self.hypernet.eval()
        device = next(self.hypernet.parameters()).device
        totals = [
            self.loss((self.emb[t][-k:].to(device), torch.full((k,), t, device=device)))
            for t, k in enumerate(self.held_out)
        ]
        return float(sum(s for s, _ in totals) / sum(c for _, c in totals))
