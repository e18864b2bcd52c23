"""Benchmark: one SFT step of T2L on SmolLM2-135M and the SNI training tasks (8 tasks x 1 example).

Ours (``SFTTrainer.loss``): rows grouped by length, one forward per group, and only the positions that
predict a response token projected onto the vocabulary. Baseline, on the same batches in the same run:
one forward over every row padded to the longest, full logits, the same loss. Both take the same
hypernetwork pass, backward and optimizer step; the loss values must agree. Regularisers are off so
the two compute one objective.

    python -m bench.train_step [--steps 6] [--max-len 160] [--json OUT]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.stats import summary, write_json
from hypernet.base import load_base
from hypernet.checkpoint import default_checkpoint, load_checkpoint
from hypernet.data.sni import IGNORE, Task, load_tasks
from hypernet.embed import Embedder
from hypernet.settings import Settings
from hypernet.train.sft import Batch, SFTConfig, SFTTrainer


def padded_full_logits_loss(trainer: SFTTrainer, batch: Batch) -> tuple[torch.Tensor, int]:
    """The baseline: every row of the step in one padded forward, logits at every position."""
    embeddings, groups = batch
    longest = max(ids.shape[1] for _, ids, _, _ in groups)

    def padded(i: int, value: int) -> torch.Tensor:  # the groups are right padded: pad them further
        return torch.cat([nn.functional.pad(g[i], (0, longest - g[i].shape[1]), value=value) for g in groups])

    ids, mask, labels = padded(1, trainer.pad), padded(2, 0), padded(3, IGNORE)
    owner = torch.cat([g[0] for g in groups])
    A_all, B_all = trainer.hypernet(embeddings)
    A = {m: a.index_select(0, owner) for m, a in A_all.items()}
    B = {m: b.index_select(0, owner) for m, b in B_all.items()}
    with trainer.layers.applied(A, B, trainer.config.hypernet.scaling):
        logits = trainer.base(input_ids=ids, attention_mask=mask).logits
    targets = labels[:, 1:]
    loss = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
    )
    return loss, int((targets != IGNORE).sum())


def timed_step(trainer: SFTTrainer, batch: Batch, loss_fn) -> tuple[float, float]:
    """Seconds for loss, backward and optimizer step; and the per-token loss."""
    trainer.hypernet.train()
    start = time.perf_counter()
    summed, count = loss_fn(batch)
    (summed / count).backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, summed.item() / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-len", type=int, default=160)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = Settings()
    start = default_checkpoint(settings.checkpoints_dir)
    hypernet, config = load_checkpoint(start)
    base, tokenizer = load_base(settings.base_model, settings.checkpoints_dir)
    embedder = Embedder(config.embedder.name, config.embedder.pooling)
    # a few descriptions per task: the sampler is the same, and embedding them all would take minutes
    tasks = [Task(t.name, t.descriptions[:4], t.instances) for t in load_tasks(settings.data_dir, "train")]
    cfg = SFTConfig(
        tasks_per_step=8,
        examples_per_task=1,
        max_len=args.max_len,
        lr=1e-9,
        label_smoothing=0.0,
        neftune_alpha=0.0,
        l2_generated=0.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SFTTrainer(base, tokenizer, hypernet, config, embedder, tasks, tasks[:1], cfg, Path(tmp))
        for m in trainer.hypernet.modules():  # dropout off: both paths must see the same function
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        ours, baseline, tokens = [], [], []
        for _ in range(args.steps):
            batch = trainer.sample()
            tokens.append(sum(int(mask.sum()) for _, _, mask, _ in batch[1]))
            fast, loss_fast = timed_step(trainer, batch, trainer.loss)
            slow, loss_slow = timed_step(trainer, batch, lambda b: padded_full_logits_loss(trainer, b))
            assert abs(loss_fast - loss_slow) <= 1e-3 * abs(loss_slow), (loss_fast, loss_slow)
            ours.append(fast)
            baseline.append(slow)

    result = {
        "ours": summary(ours),
        "padded_full_logits": summary(baseline),
        "tokens_per_step": summary([float(t) for t in tokens]),
        "threads": torch.get_num_threads(),
    }
    print(f"{'SFT step (8 tasks x 1 example)':<34}{'p50 s':>8}{'p95 s':>8}{'x baseline':>12}")
    ref = result["padded_full_logits"]["p50"]
    for name in ("ours", "padded_full_logits"):
        s = result[name]
        print(f"{name:<34}{s['p50']:>8.2f}{s['p95']:>8.2f}{s['p50'] / ref:>12.2f}")
    speedup = ref / result["ours"]["p50"]
    print(f"speed-up (baseline p50 / ours p50): {speedup:.2f}x on {result['threads']} threads")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
