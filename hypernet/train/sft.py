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
from hypernet.vector_cache import VectorCache


class SFTConfig(LoopConfig):
    examples_per_task: int = Field(2, ge=1)
    max_len: int = Field(256, ge=16)
    val_examples: int = Field(4, ge=1, description="examples per held-out task in the validation set")
    # the reference's regularisers (its SFT recipe's values); training steps only, never validation
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    neftune_alpha: float = Field(5.0, ge=0, description="NEFTune noise on the base's input embeddings")
    l2_generated: float = Field(1e-3, ge=0, description="L2 penalty on the generated A and B")
    # a mismatched-description term (ours, not the reference's): each row is also scored under the
    # adapter of another task of the step, and a hinge asks that adapter to do worse by a margin
    mismatch_weight: float = Field(0.0, ge=0, description="weight of the mismatched-description hinge")
    mismatch_margin: float = Field(0.5, ge=0, description="nats per token the right adapter must win by")


Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# each row's task [rows], ids, attention mask, labels [rows, tokens]: rows of similar length, padded together
Batch = tuple[torch.Tensor, list[Rows]]  # description embeddings [tasks, dim], and the step's row groups

CHUNK_COST = 64  # the fixed cost of one more forward, in padded tokens


def length_groups(lengths: list[int], cost: int = CHUNK_COST) -> list[list[int]]:
    """Rows split into groups of similar length that minimise padded tokens plus ``cost`` per group.

    One forward pads every row to the longest; SNI examples range from 20 to 200+ tokens, so a step's
    rows padded together are mostly padding. Sorting by length and cutting where it pays (an exact
    dynamic programme over the sorted rows) spends the compute on real tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cheapest grouping of the j shortest rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):
            price = best[i] + (j - i) * lengths[order[j - 1]] + cost
            if price < best[j]:
                best[j], cut[j] = price, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


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
        vector_cache: Path | None = None,
        continues: dict | None = None,
    ):
        super().__init__(hypernet, config, cfg, out, export, status)
        self.continues = continues
        self.cfg: SFTConfig = cfg
        self.base, self.tokenizer = base, tokenizer
        self.train_tasks, self.val_tasks = train_tasks, val_tasks
        self.device = next(base.parameters()).device
        self.layers = LoraLayers(base, config.base)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # a fixed LoRA ignores the description: it draws the same batches without paying for embeddings
        self.reads_descriptions = getattr(hypernet, "reads_descriptions", True)
        self.vectors = VectorCache(vector_cache or out / "vectors.sqlite", embedder)
        self.embed_dim = embedder.dim

    def provenance(self) -> dict:
        """This run's data and budget; a run started from trained weights adds up with the earlier ones."""
        examples = self.step * self.cfg.tasks_per_step * self.cfg.examples_per_task * self.cfg.grad_accum
        earlier = self.continues or {}
        return {
            "train_tasks": len(self.train_tasks),
            "val_tasks": len(self.val_tasks),
            "examples": examples,
            "total_steps": int(earlier.get("total_steps", earlier.get("steps", 0))) + self.step,
            "total_examples": int(earlier.get("total_examples", earlier.get("examples", 0))) + examples,
            **({"continues": earlier} if earlier else {}),
        }

    def _embed(self, texts: list[str]) -> list[torch.Tensor]:
        if not self.reads_descriptions:
            return list(torch.zeros(len(texts), self.embed_dim))
        return list(self.vectors.vectors(texts))

    def _collate(self, embeddings: list[torch.Tensor], pairs: list[list[dict[str, str]]]) -> Batch:
        encoded = [
            encode_example(self.tokenizer, ex["input"], ex["output"], self.cfg.max_len)
            for rows in pairs
            for ex in rows
        ]
        owners = [t for t, rows in enumerate(pairs) for _ in rows]
        groups = []
        for group in length_groups([len(ids) for ids, _ in encoded]):
            longest = max(len(encoded[r][0]) for r in group)
            ids = torch.full((len(group), longest), self.pad, dtype=torch.long)
            labels = torch.full((len(group), longest), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(group), longest), dtype=torch.long)
            for row, r in enumerate(group):  # right padding
                tokens, targets = encoded[r]
                ids[row, : len(tokens)] = torch.tensor(tokens)
                labels[row, : len(targets)] = torch.tensor(targets)
                mask[row, : len(tokens)] = 1
            owner = torch.tensor([owners[r] for r in group])
            groups.append(tuple(t.to(self.device) for t in (owner, ids, mask, labels)))
        return torch.stack(embeddings).to(self.device), groups  # type: ignore[return-value]

    def sample(self) -> Batch:
        """Tasks, one random description each, and a few of each task's examples."""
        cfg, rng = self.cfg, self.rng
        chosen = rng.sample(range(len(self.train_tasks)), min(cfg.tasks_per_step, len(self.train_tasks)))
        texts, pairs = [], []
        for i, t in enumerate(chosen):  # every process draws the whole global batch, then keeps its share
            task = self.train_tasks[t]
            description = task.descriptions[rng.randrange(len(task.descriptions))]
            examples = rng.sample(task.instances, min(cfg.examples_per_task, len(task.instances)))
            if i % self.world == self.rank:
                texts.append(description)
                pairs.append(examples)
        return self._collate(self._embed(texts), pairs)

    def _forward(
        self,
        A_all: dict,
        B_all: dict,
        owner: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        smoothing: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy of one group of rows under the adapters ``owner`` picks, and each
        token's row. Only the positions that predict a response token are projected onto the vocabulary."""
        A = {m: a.index_select(0, owner) for m, a in A_all.items()}
        B = {m: b.index_select(0, owner) for m, b in B_all.items()}
        targets = labels[:, 1:]
        keep = nn.functional.pad(targets != IGNORE, (0, 1))  # position p predicts token p + 1
        with self.layers.applied(A, B, self.config.hypernet.scaling):
            logits = self.base(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        losses = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets[keep[:, :-1]],
            reduction="none",
            label_smoothing=smoothing,
        )
        return losses, keep.nonzero()[:, 0]

    def loss(self, batch: Batch, model: nn.Module | None = None) -> tuple[torch.Tensor, int]:
        """Summed response-token cross-entropy and its token count, each row under its task's adapter.

        The descriptions go through the hypernetwork once; each group of rows is one forward of the base.
        With ``mismatch_weight``, each row is scored again under the next task's adapter, and the hinge
        ``relu(margin - (mismatched - matched))`` on the rows' mean token losses (weighted by tokens, like
        the loss) makes adapters specific to their description, not one generic format adapter.
        """
        embeddings, groups = batch
        model = model or self.hypernet
        training, cfg = model.training, self.cfg
        smoothing = cfg.label_smoothing if training else 0.0
        A_all, B_all = model(embeddings)
        tasks = embeddings.shape[0]
        contrast = training and cfg.mismatch_weight > 0 and tasks > 1
        total, count = torch.zeros((), device=self.device), 0
        tokens_of_task = torch.zeros(tasks, device=self.device)
        noise = self._neftune() if training and cfg.neftune_alpha > 0 else None
        try:
            for owner, ids, mask, labels in groups:
                losses, rows = self._forward(A_all, B_all, owner, ids, mask, labels, smoothing)
                total = total + losses.sum()
                count += losses.numel()
                tokens = torch.zeros(len(owner), device=self.device).index_add_(
                    0, rows, torch.ones_like(losses)
                )
                tokens_of_task.index_add_(0, owner, tokens)
                if contrast:
                    other = (owner + 1) % tasks  # the next task of the step: a real, different description
                    wrong, _ = self._forward(A_all, B_all, other, ids, mask, labels, smoothing)
                    per_row = torch.zeros(len(owner), device=self.device)
                    matched = per_row.index_add(0, rows, losses) / tokens.clamp(min=1)
                    mismatched = per_row.index_add(0, rows, wrong) / tokens.clamp(min=1)
                    hinge = torch.relu(cfg.mismatch_margin - (mismatched - matched))
                    total = total + cfg.mismatch_weight * (hinge * tokens).sum()
        finally:
            if noise is not None:
                noise.remove()
        if training and cfg.l2_generated > 0:
            # the reference's mean(A^2) + mean(B^2) summed over modules, per task, weighted by the task's
            # tokens: the penalty is then a per-token term like the loss, the same however rows are split
            penalty = sum(
                A_all[m].pow(2).flatten(1).mean(1) + B_all[m].pow(2).flatten(1).mean(1) for m in A_all
            )
            total = total + cfg.l2_generated * (penalty * tokens_of_task).sum()
        return total, count

    def _neftune(self) -> torch.utils.hooks.RemovableHandle:
        """NEFTune (Jain et al., 2023), as the reference trains: uniform noise of magnitude
        alpha / sqrt(tokens x width) added to the base's input embeddings of each forward."""
        alpha = self.cfg.neftune_alpha

        def add_noise(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            magnitude = min(1.0, alpha / (output.shape[1] * output.shape[2]) ** 0.5)
            return output + torch.empty_like(output).uniform_(-magnitude, magnitude)

        return self.base.get_input_embeddings().register_forward_hook(add_noise)

    def _val_set(self) -> list[tuple[str, list[dict]]]:
        """Each validation task's description and examples, fixed for the run."""
        rng = random.Random(self.cfg.seed + 1)
        chosen = []
        for task in self.val_tasks:
            description = task.descriptions[rng.randrange(len(task.descriptions))]
            chosen.append(
                (description, rng.sample(task.instances, min(self.cfg.val_examples, len(task.instances))))
            )
        return chosen

    @torch.no_grad()
    def _val_losses(self, shift: int) -> list[float]:
        """Mean token loss per validation task, each under the description of the task ``shift`` on."""
        self.hypernet.eval()
        chosen = self._val_set()
        losses = []
        for i, (_, examples) in enumerate(chosen):
            description = chosen[(i + shift) % len(chosen)][0]
            summed, count = self.loss(self._collate(self._embed([description]), [examples]))
            losses.append(summed.item() / count)
        return losses

    def validate(self) -> float:
        """Loss on the validation tasks (never trained on), each under its own description."""
        return _mean(self._val_losses(0))

    def validation(self) -> dict:
        """``val_loss``, and how much the description matters on unseen tasks: ``val_mismatch_gap``, the
        validation loss when each task gets the next validation task's description minus the loss under
        its own (0 for a fixed LoRA; not logged for one). The matched losses serve both."""
        matched = self._val_losses(0)
        figures = {"val_loss": _mean(matched)}
        if self.reads_descriptions and len(matched) >= 2:
            mismatched = self._val_losses(1)
            figures["val_mismatch_gap"] = _mean([m - o for m, o in zip(mismatched, matched, strict=True)])
        return figures


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
