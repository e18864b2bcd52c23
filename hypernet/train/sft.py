"""Supervised fine-tuning of the hypernetwork through the frozen base model (T2L's SFT).

Each step samples several training tasks, one random description per task and a few of its examples.
The descriptions' embeddings go through the hypernetwork in one pass; each task's adapter is applied to
that task's rows of one batched forward of the base (``hypernet.lora``: per-row adapters, no loop of
forwards per task). The loss is next-token cross-entropy on response tokens only, and gradients reach
the hypernetwork only. Training state (weights, optimizer, scheduler, RNGs, step) is saved every
``ckpt_every`` steps, and a run resumes exactly where it stopped.
"""

import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.checkpoint import CheckpointConfig, now, save_checkpoint
from hypernet.data.sni import IGNORE, Task, encode_example
from hypernet.embed import Embedder
from hypernet.errors import T2LError
from hypernet.lora import LoraLayers
from hypernet.model import HyperLoRA


class SFTConfig(BaseModel):
    steps: int = Field(1000, ge=1)
    tasks_per_step: int = Field(4, ge=1)
    examples_per_task: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    clip: float = Field(1.0, gt=0)
    max_len: int = Field(256, ge=16)
    val_every: int = Field(100, ge=1)
    val_examples: int = Field(4, ge=1, description="examples per held-out task in the validation set")
    ckpt_every: int = Field(50, ge=1)
    seed: int = 0


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# (description embeddings [tasks, dim], each row's task [rows], ids, attention mask, labels [rows, tokens])
Exporter = Callable[[nn.Module, CheckpointConfig, Path], None]


def export_checkpoint(model: nn.Module, config: CheckpointConfig, state: Path) -> None:
    """The trained hypernetwork as a checkpoint in our format, provenance included."""
    save_checkpoint(model, config, state / "checkpoint")


class SFTTrainer:
    def __init__(
        self,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        hypernet: HyperLoRA,
        config: CheckpointConfig,
        embedder: Embedder,
        train_tasks: list[Task],
        val_tasks: list[Task],
        cfg: SFTConfig,
        out: Path,
        export: "Exporter | None" = None,
        status: str = "sft",
    ):
        self.base, self.tokenizer, self.hypernet, self.config = base, tokenizer, hypernet, config
        self.train_tasks, self.val_tasks, self.cfg, self.out = train_tasks, val_tasks, cfg, out
        self.export, self.status = export or export_checkpoint, status
        self.device = next(base.parameters()).device
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if cfg.tasks_per_step % self.world:
            raise T2LError(
                f"tasks_per_step={cfg.tasks_per_step} must be a multiple of the {self.world} processes"
            )
        self.model = DistributedDataParallel(hypernet) if self.world > 1 else hypernet
        self.layers = LoraLayers(base, config.base)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.train_emb = self._embeddings(embedder, train_tasks, "train")
        self.val_emb = self._embeddings(embedder, val_tasks, "val")
        self.optimizer = torch.optim.AdamW(hypernet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.step = 0

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay to zero at the last step."""
        if step < self.cfg.warmup_steps:
            return (step + 1) / self.cfg.warmup_steps
        progress = (step - self.cfg.warmup_steps) / max(1, self.cfg.steps - self.cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _embeddings(self, embedder: Embedder, tasks: list[Task], name: str) -> list[torch.Tensor]:
        """Every description of every task, embedded once and cached beside the run."""
        cache = self.out / f"embeddings-{name}.safetensors"
        texts = [d for task in tasks for d in task.descriptions]
        key = f"{embedder.name}|{embedder.pooling}|{len(texts)}"
        if self.world > 1 and self.rank > 0:  # the first process embeds and writes; the others read
            dist.barrier()
            return list(load_file(str(cache))["vectors"].split([len(t.descriptions) for t in tasks]))
        vectors = self._embed_or_read(embedder, cache, key, texts, tasks)
        if self.world > 1:
            dist.barrier()
        return vectors

    def _embed_or_read(
        self, embedder: Embedder, cache: Path, key: str, texts: list[str], tasks: list[Task]
    ) -> list[torch.Tensor]:
        if cache.is_file():
            stored = load_file(str(cache))
            if stored.get("key") is not None and bytes(stored["key"].tolist()).decode() == key:
                flat = stored["vectors"]
                return list(flat.split([len(t.descriptions) for t in tasks]))
        flat = torch.cat(
            [embedder.embed(texts[i : i + 256]).vectors.cpu() for i in range(0, len(texts), 256)]
        )
        self.out.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": flat, "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, str(cache))
        return list(flat.split([len(t.descriptions) for t in tasks]))

    def _collate(self, embeddings: list[torch.Tensor], pairs: list[list[dict[str, str]]]) -> Batch:
        encoded = [
            encode_example(self.tokenizer, ex["input"], ex["output"], self.cfg.max_len)
            for rows in pairs
            for ex in rows
        ]
        longest = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), longest), self.pad, dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for row, (tokens, targets) in enumerate(encoded):  # right padding
            ids[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, : len(targets)] = torch.tensor(targets)
            mask[row, : len(tokens)] = 1
        owner = torch.tensor([t for t, rows in enumerate(pairs) for _ in rows])
        device = self.device
        tensors = torch.stack(embeddings), owner, ids, mask, labels
        return tuple(t.to(device) for t in tensors)  # type: ignore[return-value]

    def sample(self) -> Batch:
        """Tasks, one random description each, and a few of each task's examples."""
        cfg, rng = self.cfg, self.rng
        chosen = rng.sample(range(len(self.train_tasks)), min(cfg.tasks_per_step, len(self.train_tasks)))
        embeddings, pairs = [], []
        for i, t in enumerate(chosen):  # every process draws the whole global batch, then keeps its share
            task = self.train_tasks[t]
            embedding = self.train_emb[t][rng.randrange(len(task.descriptions))]
            examples = rng.sample(task.instances, min(cfg.examples_per_task, len(task.instances)))
            if i % self.world == self.rank:
                embeddings.append(embedding)
                pairs.append(examples)
        return self._collate(embeddings, pairs)

    def loss(self, batch: Batch, model: nn.Module | None = None) -> tuple[torch.Tensor, int]:
        """Summed response-token cross-entropy and its token count, each row under its task's adapter."""
        embeddings, owner, ids, mask, labels = batch
        A, B = (model or self.hypernet)(embeddings)
        A = {m: a.index_select(0, owner) for m, a in A.items()}
        B = {m: b.index_select(0, owner) for m, b in B.items()}
        with self.layers.applied(A, B, self.config.hypernet.scaling):
            logits = self.base(input_ids=ids, attention_mask=mask).logits
        targets = labels[:, 1:]
        total = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return total, int((targets != IGNORE).sum())

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

    @torch.no_grad()
    def validate(self) -> float:
        """Loss on the held-out tasks, from descriptions and examples fixed for the whole run."""
        self.hypernet.eval()
        rng = random.Random(self.cfg.seed + 1)
        losses = []
        for t, task in enumerate(self.val_tasks):
            embedding = self.val_emb[t][rng.randrange(len(task.descriptions))]
            examples = rng.sample(task.instances, min(self.cfg.val_examples, len(task.instances)))
            summed, count = self.loss(self._collate([embedding], [examples]))
            losses.append(summed.item() / count)
        return sum(losses) / len(losses) if losses else float("nan")

    # ---- exact resume

    def save(self, extra: dict) -> None:
        state = self.out / "state"
        tmp = self.out / "state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        training = {
            "status": self.status,
            "steps": self.step,
            "sft": self.cfg.model_dump(),
            "train_tasks": len(self.train_tasks),
            "command": " ".join(sys.argv),
            "updated": now(),
            **extra,
        }
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
        (tmp / "trainer.json").write_text(json.dumps({"step": self.step, "rng": self.rng.getstate()}))
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
        version, internal, gauss = meta["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        return True

    def run(self, log: Path | None = None) -> dict:
        """Train to ``cfg.steps``, logging JSON lines, validating and checkpointing on schedule."""
        log = log or self.out / "metrics.jsonl"
        last: dict = {}
        if self.step == 0 and self.rank == 0:  # the curve's start: an untrained hypernetwork is the base
            with log.open("a") as f:
                f.write(json.dumps({"step": 0, "val_loss": self.validate()}) + "\n")
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
                last["val_loss"] = self.validate()
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
