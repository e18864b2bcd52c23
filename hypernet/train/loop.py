"""The training loop the hypernetwork's trainers share: AdamW with warmup and cosine decay, clipping,
accumulation, DDP, logging, and checkpoints with exact resume (weights, optimizer, scheduler, RNGs, step).

A trainer subclass says how to ``sample`` a batch, how to compute its ``loss`` (a sum and the count it
is normalised by) and how to ``validate``; this class does the rest.
"""

import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hypernet.checkpoint import CheckpointConfig, now, save_checkpoint
from hypernet.errors import T2LError

Exporter = Callable[[nn.Module, CheckpointConfig, Path], None]


class LoopConfig(BaseModel):
    steps: int = Field(1000, ge=1)
    tasks_per_step: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    clip: float = Field(1.0, gt=0)
    val_every: int = Field(100, ge=1)
    ckpt_every: int = Field(50, ge=1)
    seed: int = 0


def export_checkpoint(model: nn.Module, config: CheckpointConfig, state: Path) -> None:
    """The trained hypernetwork as a checkpoint in our format, provenance included."""
    save_checkpoint(model, config, state / "checkpoint")


class Trainer:
    def __init__(
        self,
        hypernet: nn.Module,
        config: CheckpointConfig,
        cfg: LoopConfig,
        out: Path,
        export: Exporter | None = None,
        status: str = "sft",
    ):
        self.hypernet, self.config, self.cfg, self.out = hypernet, config, cfg, out
        self.export, self.status = export or export_checkpoint, status
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if cfg.tasks_per_step % self.world:
            raise T2LError(
                f"tasks_per_step={cfg.tasks_per_step} must be a multiple of the {self.world} processes"
            )
        self.model = DistributedDataParallel(hypernet) if self.world > 1 else hypernet
        trainable = [p for p in hypernet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.step = 0
        self.best_val = math.inf  # the lowest validation loss so far; its weights are exported to out/best

    # ---- what a trainer defines

    def sample(self) -> Any:
        """This process's share of the next global batch (every process draws the whole batch)."""
        raise NotImplementedError

    def loss(self, batch: Any, model: nn.Module | None = None) -> tuple[torch.Tensor, int]:
        """A summed loss and the count it is averaged over."""
        raise NotImplementedError

    def validate(self) -> float:
        raise NotImplementedError

    def provenance(self) -> dict:
        """What the exported result records about its training, beyond the loop's settings."""
        return {}

    def validation(self) -> dict:
        """``val_loss`` (the figure that selects the model) and any more figures to log beside it."""
        return {"val_loss": self.validate()}

    # ---- shared machinery

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay to zero at the last step."""
        if step < self.cfg.warmup_steps:
            return (step + 1) / self.cfg.warmup_steps
        progress = (step - self.cfg.warmup_steps) / max(1, self.cfg.steps - self.cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def train_step(self) -> tuple[float, int]:
        """One optimizer step. Under DDP each process takes its share of the same global batch, and the
        loss is normalised by the global token count, so the update equals a single process's."""
        self.hypernet.train()
        total, tokens = 0.0, 0
        for _ in range(self.cfg.grad_accum):
            summed, count = self.loss(self.sample(), self.model)
            counts = torch.tensor([count, summed.item()], dtype=torch.float64)
            if self.world > 1:
                dist.all_reduce(counts)
            # DDP averages gradients over processes; scaling by the world size makes that a global mean
            ((summed * self.world / counts[0]) / self.cfg.grad_accum).backward()
            total += float(counts[1] / counts[0]) / self.cfg.grad_accum
            tokens += int(counts[0])
        nn.utils.clip_grad_norm_(self.hypernet.parameters(), self.cfg.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total, tokens

    # ---- exact resume

    def _training(self, extra: dict) -> dict:
        """The provenance an exported result carries: status, steps, settings, command, losses."""
        return {
            "status": self.status,
            "steps": self.step,
            "settings": self.cfg.model_dump(),
            **self.provenance(),
            "command": " ".join(sys.argv),
            "updated": now(),
            **extra,
        }

    def _export_best(self, val_loss: float, loss: float) -> None:
        """Export the weights of a new lowest validation loss to ``out/best`` (model selection)."""
        self.best_val = val_loss
        tmp, best = self.out / "best.tmp", self.out / "best"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        training = self._training(
            {"last_loss": loss, "val_loss": val_loss, "selected": "lowest validation loss"}
        )
        self.export(self.hypernet, self.config.model_copy(update={"training": training}), tmp)
        shutil.rmtree(best, ignore_errors=True)
        tmp.rename(best)

    def save(self, extra: dict) -> None:
        state = self.out / "state"
        tmp = self.out / "state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        training = self._training(extra)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.hypernet.state_dict().items()},
            str(tmp / "weights.safetensors"),
        )
        self.export(self.hypernet, self.config.model_copy(update={"training": training}), tmp)
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "trainer.pt",
        )
        meta = {"step": self.step, "rng": self.rng.getstate(), "best_val": self.best_val}
        (tmp / "trainer.json").write_text(json.dumps(meta))
        if state.exists():  # swap in the new state, then drop the old one: a crash leaves one intact
            old = self.out / "state.old"
            state.rename(old)
            tmp.rename(state)
            shutil.rmtree(old)
        else:
            tmp.rename(state)

    def load(self) -> bool:
        """Resume from ``out/state`` when it exists; True if it did."""
        state = self.out / "state"
        if not (state / "trainer.json").is_file():
            return False
        weights = state / "weights.safetensors"
        if not weights.is_file():  # runs saved before weights.safetensors existed kept only the export
            weights = state / "checkpoint" / "model.safetensors"
        self.hypernet.load_state_dict(load_file(str(weights)))
        saved = torch.load(state / "trainer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        meta = json.loads((state / "trainer.json").read_text())
        self.step = meta["step"]
        self.best_val = meta.get("best_val", math.inf)
        version, internal, gauss = meta["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        return True

    def run(self, log: Path | None = None) -> dict:
        """Train to ``cfg.steps``, logging JSON lines, validating and checkpointing on schedule."""
        self.out.mkdir(parents=True, exist_ok=True)
        log = log or self.out / "metrics.jsonl"
        last: dict = {}
        if self.step == 0 and self.rank == 0:  # the curve's start: an untrained hypernetwork is the base
            with log.open("a") as f:
                f.write(json.dumps({"step": 0, **self.validation()}) + "\n")
        bar = tqdm(
            total=self.cfg.steps, initial=self.step, desc="sft", dynamic_ncols=True, disable=self.rank > 0
        )
        while self.step < self.cfg.steps:
            start = time.perf_counter()
            loss, tokens = self.train_step()
            seconds = time.perf_counter() - start
            rate = tokens / seconds
            last = {
                "step": self.step,
                "loss": loss,
                "lr": self.scheduler.get_last_lr()[0],
                "tokens": tokens,
                "tokens_per_s": rate,
            }
            if self.rank > 0:
                continue  # one process validates, logs and saves
            if self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps:
                last.update(self.validation())
                if last["val_loss"] < self.best_val:
                    self._export_best(last["val_loss"], loss)
            with log.open("a") as f:
                f.write(json.dumps(last) + "\n")
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
            bar.update(1)
            if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps:
                self.save(
                    {"last_loss": loss, **({"val_loss": last["val_loss"]} if "val_loss" in last else {})}
                )
        bar.close()
        return last
