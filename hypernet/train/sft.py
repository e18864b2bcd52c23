"""Supervised fine-tuning of the hypernetwork through the frozen base model (T2L's SFT).

Each step samples several training tasks, one random description per task and a few of its examples.
The descriptions' embeddings go through the hypernetwork in one pass; each task's adapter is applied to
that task's rows of one batched forward of the base (``hypernet.lora``: per-row adapters, no loop of
forwards per task). The loss is next-token cross-entropy on response tokens only, and gradients reach
the hypernetwork only. The loop, checkpoints and exact resume are ``hypernet.train.loop``'s.
"""

import random
from pathlib import Path

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hypernet.checkpoint import CheckpointConfig
from hypernet.data.sni import IGNORE, Task, encode_example
from hypernet.embed import Embedder
from hypernet.lora import LoraLayers
from hypernet.train.loop import Exporter, LoopConfig, Trainer


class SFTConfig(LoopConfig):
    examples_per_task: int = Field(2, ge=1)
    max_len: int = Field(256, ge=16)
    val_examples: int = Field(4, ge=1, description="examples per held-out task in the validation set")


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# (description embeddings [tasks, dim], each row's task [rows], ids, attention mask, labels [rows, tokens])


class SFTTrainer(Trainer):
    def __init__(
        self,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        hypernet: nn.Module,
        config: CheckpointConfig,
        embedder: Embedder,
        train_tasks: list[Task],
        val_tasks: list[Task],
        cfg: SFTConfig,
        out: Path,
        export: Exporter | None = None,
        status: str = "sft",
    ):
        super().__init__(hypernet, config, cfg, out, export, status)
        self.cfg: SFTConfig = cfg
        self.base, self.tokenizer = base, tokenizer
        self.train_tasks, self.val_tasks = train_tasks, val_tasks
        self.device = next(base.parameters()).device
        self.layers = LoraLayers(base, config.base)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.train_emb = self._embeddings(embedder, train_tasks, "train")
        self.val_emb = self._embeddings(embedder, val_tasks, "val")

    def provenance(self) -> dict:
        return {"train_tasks": len(self.train_tasks)}

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
